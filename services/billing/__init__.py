"""The billing service: The token ledger, pricing, packages, Stripe purchases and webhooks."""
