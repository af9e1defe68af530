"""The files service: Uploads, validation, image metadata, storage back ends, quotas, downloads."""
