"""The service kit: what every Style Studio service is built from.

settings (typed env config), db (async SQLAlchemy on the service's own schema),
migrations (Alembic per service), server (grpc.aio with health, reflection,
graceful shutdown, interceptors), errors (domain error -> gRPC status), auth
(caller context, service credentials), events (transactional outbox, Redis
Streams relay, idempotent consumers), telemetry and logging.
"""
