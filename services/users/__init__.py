"""The users service: Accounts, sign-in, tokens, sessions, plans, API keys."""
