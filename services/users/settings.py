"""Typed settings of the users service (environment, prefix ``STYLESTUDIO_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from kit.settings import DevelopmentOnly, SecretCheck, ServiceSettings


class UsersSettings(ServiceSettings):
    service_name: str = "users"

    # --- signing keys and tokens ---
    # JSON list of {"kid", "pem"} EC P-256 private keys, imported into the users schema at
    # start-up and trusted (published in the JWKS) for as long as they stay configured. The
    # newest key in the schema signs; `python -m services.users.admin rotate-keys` adds a new
    # one and retires the old, which stays published until its tokens have expired.
    # Empty and no key in the schema yet: one is generated and stored.
    jwt_signing_keys: SecretStr = SecretStr("")
    # Encrypts the private signing keys stored in the users schema (PKCS#8 with this
    # passphrase); empty: stored in the clear, which only development allows. Keep it in a
    # secret store, not next to the database.
    signing_key_passphrase: SecretStr = SecretStr("")
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # How often a replica re-reads the current signing key from the schema (rotation pick-up).
    signing_key_refresh_seconds: float = 30.0
    # Allowance for clocks and for replicas still signing with a just-retired key.
    key_retirement_margin_seconds: int = 120
    # How long Redis keeps a user's credential state after its last change or rebuild (a
    # missing one is rebuilt from the database on the next call; see kit/credential_state.py).
    credential_state_ttl_seconds: int = 24 * 3600

    # --- passwords (argon2id) ---
    password_min_length: int = 8
    password_max_length: int = 256
    argon2_time_cost: int = 3
    argon2_memory_cost_kib: int = 65536
    argon2_parallelism: int = 4
    # Hashes running at once (0: one per core) and hashes allowed to wait for a slot; past
    # that a sign-in gets RATE_LIMITED with Retry-After.
    argon2_max_concurrent: int = 0
    argon2_max_waiting: int = 64

    # --- brute-force protection (Redis; the policy is in docs/users.md, "Brute force") ---
    # An account's first failures are free; from the `login_free_failures`-th on, its next
    # attempt waits a delay after the last one, doubling from the base up to the cap (no hard
    # lock). Failures are forgotten after the window passes without one.
    login_free_failures: int = Field(default=3, ge=1)
    login_delay_base_seconds: float = Field(default=1.0, gt=0)
    login_delay_max_seconds: float = Field(default=60.0, gt=0)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    # A client (address and user agent) that signed in to an account this recently is not
    # held up by others' failures on it: it has a delay of its own and no address limit.
    login_known_device_days: float = Field(default=30.0, ge=0)
    # Failed sign-ins from one address (IPv4, IPv6 /64) per window, whatever the account;
    # 0: no limit.
    login_max_failures_per_address: int = Field(default=50, ge=0)

    # --- sign-ups ---
    # Accounts one address (IPv4, IPv6 /64) may create per window; 0: no limit. Unset: 10 in
    # production, 10,000 in development (make run, the tests and benchmarks sign up hundreds
    # of accounts from 127.0.0.1).
    signup_max_per_address: int | None = Field(default=None, ge=0)
    signup_window_seconds: int = Field(default=3600, ge=1)

    @property
    def signup_limit(self) -> int:
        if self.signup_max_per_address is not None:
            return self.signup_max_per_address
        return 10 if self.is_production else 10_000

    # --- API keys ---
    api_key_idempotency_seconds: int = 600

    # --- OAuth sign-in ---
    # Where the provider sends the browser back ({provider} is replaced); the front end then
    # posts the code and state to /v1/auth/oauth/{provider}/callback.
    oauth_redirect_uri: str = "http://127.0.0.1:3000/auth/callback/{provider}"
    oauth_state_ttl_seconds: int = 600
    oauth_http_timeout_seconds: float = 10.0
    google_client_id: str = ""
    google_client_secret: SecretStr = SecretStr("")
    google_authorize_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_userinfo_url: str = "https://openidconnect.googleapis.com/v1/userinfo"
    google_jwks_url: str = "https://www.googleapis.com/oauth2/v3/certs"
    google_issuer: str = "https://accounts.google.com"
    github_client_id: str = ""
    github_client_secret: SecretStr = SecretStr("")
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"
    github_api_url: str = "https://api.github.com"

    # --- GetMyStats, GetMyEntitlements ---
    stats_rpc_timeout_seconds: float = 3.0
    entitlements_rpc_timeout_seconds: float = 3.0

    # --- Sign-up asks billing for the welcome grant (services/users/welcome.py) ---
    # Past this, sign-up answers anyway and the user.created event grants; 0: the event only.
    welcome_grant_timeout_seconds: float = Field(default=2.0, ge=0.0)

    def secret_checks(self) -> list[SecretCheck]:
        return [*super().secret_checks(), self.secret_check("signing_key_passphrase")]

    def development_only(self) -> list[DevelopmentOnly]:
        # The back-channel URLs of a configured provider carry its client secret or tokens.
        google, github = bool(self.google_client_id), bool(self.github_client_id)
        urls = [
            *(
                self.https_only(f, in_use=google)
                for f in ("google_token_url", "google_userinfo_url", "google_jwks_url")
            ),
            *(self.https_only(f, in_use=github) for f in ("github_token_url", "github_api_url")),
        ]
        return [*super().development_only(), *urls]
