"""One Settings object for the whole service (env vars prefixed ``REFERLOOP_`` and ``.env``)."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def valid_rate_limit(value: str) -> str:
    """A limit in the `limits` library's notation, checked at start-up: a typo ("20/min") would
    otherwise start cleanly and fail every request it applies to with a 500."""
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit such as '20/minute' or '10/hour'") from None
    return value


RateLimit = Annotated[str, AfterValidator(valid_rate_limit)]


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class EmailBackend(StrEnum):
    file = "file"
    smtp = "smtp"


class PayoutProviderName(StrEnum):
    manual = "manual"
    razorpayx = "razorpayx"
    stripe = "stripe"


class WithdrawalPolicy(BaseModel):
    """Limits and fees of withdrawals, in minor units of the withdrawal's currency (one policy per
    currency: amounts are never converted). Env: JSON, e.g. REFERLOOP_WITHDRAWAL_POLICY='{"min_amount": 500}'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_amount: int = Field(default=100, ge=1)
    max_amount: int = Field(default=10_000_000, ge=1)
    daily_max_amount: int = Field(default=20_000_000, ge=1)  # per member, UTC calendar day
    monthly_max_amount: int = Field(default=50_000_000, ge=1)  # per member, UTC calendar month
    kyc_required_above: int = Field(default=1_000_000, ge=0)  # larger withdrawals need verified KYC
    auto_approve_below: int = Field(default=500_000, ge=0)  # smaller ones skip finance review; 0: never
    fee_fixed: int = Field(default=0, ge=0)  # deducted from what the member receives
    fee_bps: int = Field(default=0, ge=0, le=10_000)  # basis points of the amount, rounded down


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REFERLOOP_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    env: Environment = Environment.development
    """development, test or production. Outside development the service refuses to start with a missing or placeholder secret (production also without its service URLs); development generates its keys under `var/keys`."""
    var_dir: Path = Path("var")
    """Where development data lives: embedded PostgreSQL and Redis, generated keys, mail and SMS sinks."""
    public_base_url: str = "http://127.0.0.1:8000"
    """The public address of the API, used to build share links (`{public_base_url}/r/{slug}`)."""

    # Services. Empty means "start the embedded one under var/" (development only).
    database_url: str = ""
    """PostgreSQL URL. Empty: start embedded PostgreSQL under `var/` (development only)."""
    redis_url: str = ""
    """Redis URL. Empty: start embedded Redis under `var/` (development only)."""
    amqp_url: str = ""
    """RabbitMQ URL. Empty: the worker drains the outbox in-process (no broker)."""
    db_pool_size: int = Field(default=30, ge=1, le=500)
    """Database connections each process keeps open."""
    db_max_overflow: int = Field(default=0, ge=0, le=500)
    """Extra connections allowed beyond the pool under bursts (closed after use; 0 makes bursts wait)."""
    db_read_pool_size: int = Field(default=20, ge=1, le=500)
    """Read-only connections each process keeps for GET routes (a pool of its own, held read-only by
    PostgreSQL). A process opens up to db_pool_size + db_read_pool_size connections."""
    db_read_url: str = ""
    """PostgreSQL URL for the read session type (a streaming replica). Empty: the primary."""

    # Tokens. PEM-encoded Ed25519 private keys; the first signs, all are published and accepted.
    jwt_private_keys: list[SecretStr] = Field(default_factory=list)
    """Ed25519 private keys (PEM, JSON list). The first signs; all are published at /.well-known/jwks.json and accepted."""
    jwt_issuer: str = "referloop"
    """The `iss` claim of access tokens."""
    # AES-256-GCM keys for personal fields, `kid:base64key,...`; the first encrypts.
    field_encryption_keys: SecretStr = SecretStr("")
    """AES-256-GCM keys for personal fields, `kid:base64key,...`; the first encrypts, all decrypt (`referloop keys rotate`)."""
    access_token_ttl_seconds: int = Field(default=15 * 60, ge=60, le=3600)
    """Access token lifetime."""
    access_token_cache_size: int = Field(default=16_384, ge=0, le=1_000_000)
    """Access tokens whose signature each API process remembers as checked (about 600 bytes each; 0 checks every request). Size it to the members active within one token lifetime per process: past that, a token cycling back has left the cache and costs one Ed25519 check again."""
    refresh_token_ttl_days: int = Field(default=30, ge=1, le=365)
    """Refresh token (and session) lifetime."""
    refresh_reuse_grace_seconds: int = Field(default=10, ge=0, le=60)
    """A refresh token presented again within this many seconds gets the same new pair instead of revoking its family."""

    # Password hashing (Argon2id). Tests lower the cost; production keeps the defaults.
    argon2_time_cost: int = Field(default=3, ge=1)
    """Argon2id passes (tests lower it; keep the default in production)."""
    argon2_memory_cost_kib: int = Field(default=65536, ge=8)
    """Argon2id memory in KiB."""
    argon2_parallelism: int = Field(default=4, ge=1)
    """Argon2id lanes."""

    # One-time codes (verification and password reset).
    otp_code_ttl_seconds: int = Field(default=600, ge=60)
    """How long an emailed or texted verification or reset code stays valid."""
    otp_max_attempts: int = Field(default=5, ge=1)
    """Wrong entries allowed per code before a new code is needed."""

    # Rate limits, in the `limits` library's notation ("10/minute").
    rate_limit_enabled: bool = True
    """Turn every rate limit off (benchmarks only)."""
    rate_limit_register: RateLimit = "10/hour"
    """Sign-ups per IP address and per email/phone (`limits` notation, e.g. `10/hour`)."""
    rate_limit_login: RateLimit = "20/minute"
    """Sign-in attempts per IP and per account."""
    rate_limit_refresh: RateLimit = "60/minute"
    """Token refreshes per IP and per account."""
    rate_limit_verify: RateLimit = "10/minute"
    """Code requests and confirmations per IP and per account."""
    rate_limit_code_guesses: RateLimit = "20/day"
    """Codes tried per account and purpose (password reset, email or phone verification), whatever the number of codes sent: each code allows 5 tries, and this caps new codes as a way around that."""
    login_failures_before_delay: int = Field(default=5, ge=1)
    """Failed sign-ins to one account before each further failure locks it for 2, 4, 8 ... seconds."""
    login_delay_max_seconds: int = Field(default=900, ge=1)
    """The longest such lock."""

    # HTTP
    cors_allow_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the API from a browser (JSON list). Empty: no CORS headers."""
    trusted_proxy_count: int = Field(default=0, ge=0, le=5)
    """Reverse proxies in front of the API; the client IP is read from X-Forwarded-For that many hops back."""

    # Email
    email_backend: EmailBackend = EmailBackend.file
    """`file` writes each email to `var/mail/` (development and test); `smtp` sends through the SMTP server below. Production defaults to `smtp` and refuses to start with `file`."""
    email_from: str = "Referloop <no-reply@referloop.local>"
    """The From address of every email."""
    smtp_host: str = "127.0.0.1"
    """SMTP server (SendGrid: smtp.sendgrid.net; SES: email-smtp.<region>.amazonaws.com)."""
    smtp_port: int = 25
    """SMTP port (587 with STARTTLS for SendGrid and SES)."""
    smtp_username: str = ""
    """SMTP user (SendGrid: `apikey`; SES: the SMTP credential's user)."""
    smtp_password: SecretStr = SecretStr("")
    """SMTP password or API key."""
    smtp_starttls: bool | None = None
    """STARTTLS. Unset: upgrade whenever the server offers it; `true`: require it (production with an SMTP username or password must); `false`: never (a local relay only)."""
    smtp_timeout_seconds: float = 10.0
    """SMTP connect and command timeout."""

    # Outbox relay and consumers
    outbox_batch_size: int = Field(default=100, ge=1, le=1000)
    """Outbox rows the relay claims at once."""
    outbox_poll_interval_seconds: float = Field(default=0.5, gt=0)
    """How often an idle relay looks for new outbox rows."""
    outbox_max_attempts: int = Field(default=8, ge=1)
    """Publish (or in-process handling) attempts before an event is dead-lettered."""
    outbox_backoff_base_seconds: float = Field(default=2.0, gt=0)
    """First retry delay; it doubles per attempt."""
    outbox_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    """The longest retry delay."""
    # Handlers run at once per worker (broker prefetch, in-process drain parallelism).
    worker_concurrency: int = Field(default=10, ge=1, le=500)
    """Handlers run at once per worker (broker prefetch, in-process drain parallelism)."""
    # Prefix of every exchange and queue name, so that several deployments (or test runs) share a broker.
    amqp_namespace: str = Field(default="referloop", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    """Prefix of every exchange and queue name, so several deployments or test runs share one broker."""
    # Quorum queues survive a node loss on a cluster; classic queues are lighter on one node.
    amqp_quorum_queues: bool = True
    """Quorum queues (survive a node loss on a cluster) instead of classic ones."""

    # Referrals: share links, clicks and attribution
    referral_attribution_window_days: int = Field(default=30, ge=1, le=365)  # when no campaign sets one
    """Attribution window when a campaign sets none."""
    referral_link_cache_ttl_seconds: int = Field(default=300, ge=1, le=86400)
    """How long a share link's target stays cached in Redis."""
    click_ip_salt: SecretStr = SecretStr(
        ""
    )  # HMAC key for hashed click IPs; derived from field keys if empty
    """HMAC key for hashing click IP addresses; derived from the field keys when empty."""
    click_country_header: str = "cf-ipcountry"
    """Request header that carries the visitor's country (e.g. Cloudflare's CF-IPCountry)."""
    click_cookie_name: str = "rl_click"
    """First-party cookie that carries the click id."""
    click_flush_batch_size: int = Field(default=1000, ge=1, le=10000)
    """Clicks written to PostgreSQL per flush."""
    click_claim_idle_seconds: float = Field(default=60.0, ge=0)  # a batch pending this long was orphaned
    """A click batch claimed but not acknowledged for this long is taken over by another flusher."""
    rate_limit_referral_invite: RateLimit = "50/day"  # invitations a member may send
    """Invitations a member may send."""

    # Funnel analytics: the click job reads clicks older than the settle delay (time for the flusher,
    # orphaned batches included), at most max_span per step; the hourly recount repairs the last days.
    analytics_click_settle_seconds: float = Field(default=120.0, ge=0)
    """The funnel job counts clicks older than this (time for the flusher to write them)."""
    analytics_click_max_span_seconds: float = Field(default=3600.0, gt=0)
    """Most click time the funnel job reads per step."""
    analytics_click_recount_days: int = Field(default=2, ge=0, le=31)
    """Days of click counts the hourly recount repairs."""

    # Partner API: per-key rate limit (a key may carry its own), bulk CSV bounds.
    partner_rate_limit: RateLimit = Field(
        default="600/minute", description="Calls per partner API key (a key may carry its own limit)"
    )
    partner_csv_max_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=1024,
        le=100 * 1024 * 1024,
        description="Largest outcome CSV file accepted",
    )
    partner_csv_max_rows: int = Field(
        default=10_000, ge=1, le=100_000, description="Most rows in one outcome CSV file"
    )

    # Outbound webhooks (Standard Webhooks): retries back off exponentially for `retry_window`;
    # an endpoint that has only failed for `disable_after` is disabled and its owner emailed.
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="Time a receiver has to answer one delivery"
    )
    webhook_retry_base_seconds: float = Field(
        default=10.0, gt=0, description="First retry delay; it doubles with each failure"
    )
    webhook_retry_max_seconds: float = Field(
        default=8 * 3600.0, gt=0, description="Longest delay between two retries"
    )
    webhook_retry_window_seconds: int = Field(
        default=3 * 86400, ge=60, description="A delivery is retried this long, then marked failed"
    )
    webhook_disable_after_seconds: int = Field(
        default=3 * 86400, ge=60, description="An endpoint failing without a success this long is disabled"
    )
    webhook_delivery_batch_size: int = Field(
        default=100, ge=1, le=1000, description="Deliveries one run of the sender job claims"
    )
    webhook_delivery_concurrency: int = Field(
        default=20, ge=1, le=200, description="Deliveries sent at once by one worker"
    )

    # Observability
    log_level: str = "INFO"
    """Log level (JSON lines on stdout)."""
    access_log: bool = True
    """Log one line per request."""
    otel_exporter_otlp_endpoint: str = ""
    """OTLP/HTTP traces endpoint (e.g. Jaeger's). Empty: tracing off."""
    otel_service_name: str = "referloop"
    """`service.name` of the traces."""

    # Payout providers. `manual` (finance staff pay by hand and record the reference) needs nothing;
    # the chosen provider's credentials are required in production (see the validator below).
    payout_provider: PayoutProviderName = PayoutProviderName.manual
    """Who pays withdrawals out: `manual` (finance staff), `razorpayx` or `stripe`."""
    payout_provider_timeout_seconds: float = Field(default=30.0, gt=0, le=120)
    """Timeout of one provider HTTP call."""
    # Retries inside one call, same idempotency key; longer waits belong to the worker's backoff.
    payout_provider_max_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts within one provider call (same idempotency key)."""
    payout_provider_retry_base_seconds: float = Field(default=0.5, ge=0)
    """First in-call retry delay."""
    payout_provider_retry_max_seconds: float = Field(default=5.0, ge=0)
    """Longest in-call retry delay; longer waits are the worker's backoff."""
    razorpayx_base_url: str = "https://api.razorpay.com"
    """RazorpayX API base URL."""
    razorpayx_key_id: str = ""
    """RazorpayX key id."""
    razorpayx_key_secret: SecretStr = SecretStr("")
    """RazorpayX key secret."""
    razorpayx_account_number: str = ""  # our RazorpayX account (differs between test and live mode)
    """Our RazorpayX account number (differs between test and live mode)."""
    razorpayx_webhook_secret: SecretStr = SecretStr("")
    """Secret that signs RazorpayX webhooks (X-Razorpay-Signature)."""
    # The secret before the last rotation: Razorpay retries old events signed with it for 24 h.
    razorpayx_webhook_previous_secret: SecretStr = SecretStr("")
    """The secret before the last rotation (old events are retried for 24 h)."""
    razorpayx_bank_mode: str = Field(default="IMPS", pattern="^(IMPS|NEFT|RTGS)$")
    """Bank transfer mode: IMPS, NEFT or RTGS."""
    razorpayx_purpose: str = "payout"
    """RazorpayX payout purpose."""
    razorpayx_contact_type: str = "customer"
    """RazorpayX contact type for members."""
    # Queue (rather than fail) a payout while our RazorpayX balance is too low, so that topping it up
    # pays the members waiting instead of failing their withdrawals.
    razorpayx_queue_if_low_balance: bool = True
    """Queue payouts while our RazorpayX balance is low instead of failing them."""
    stripe_base_url: str = "https://api.stripe.com"
    """Stripe API base URL."""
    stripe_api_key: SecretStr = SecretStr("")
    """Stripe secret key."""
    stripe_api_version: str = ""  # empty: the account's default version
    """Stripe-Version header; empty: the account's default."""
    stripe_webhook_secret: SecretStr = SecretStr("")  # platform endpoint (transfer.* events)
    """Signing secret of the platform webhook endpoint (transfer events)."""
    stripe_connect_webhook_secret: SecretStr = SecretStr("")  # Connect endpoint (payout.* events)
    """Signing secret of the Connect webhook endpoint (payout events)."""
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1)
    """Oldest Stripe-Signature timestamp accepted."""
    # True: transfer to the connected account, then pay out from it to its bank (manual payouts).
    # False: only the transfer; the connected account's own payout schedule moves it to the bank.
    stripe_connect_payouts: bool = True
    """Transfer then pay out from the connected account (true), or only transfer (false)."""
    stripe_payout_method: str = Field(default="standard", pattern="^(standard|instant)$")
    """Stripe payout method: standard or instant."""
    # Where Stripe's onboarding sends a member back (return) or when its link expired or was used
    # (refresh: the app asks `POST /v1/payout-methods/{id}/onboarding-link` for a fresh one).
    stripe_onboarding_return_url: str = ""
    """Where Stripe sends a member after Connect onboarding; empty: Stripe accounts cannot be added."""
    stripe_onboarding_refresh_url: str = ""
    """Where Stripe sends a member whose onboarding link expired; empty: Stripe accounts cannot be added."""

    # Withdrawals: the default policy, and per-currency ones (`{"USD": {...}}`) that replace it.
    withdrawal_policy: WithdrawalPolicy = Field(default_factory=WithdrawalPolicy)
    """Default withdrawal limits (JSON): minimum, maximum, daily and monthly totals, auto-approval and KYC thresholds."""
    withdrawal_policy_by_currency: dict[str, WithdrawalPolicy] = Field(default_factory=dict)
    """Per-currency withdrawal policies (`{"USD": {...}}`) that replace the default."""
    # `referloop payouts sync` asks the provider about withdrawals processing for longer than this.
    payout_sync_after_seconds: int = Field(default=900, ge=0)
    """`referloop payouts sync` asks the provider about withdrawals processing for longer than this."""

    # Fault injection for crash tests: a named point where the process exits at once.
    fault_inject: str = ""
    """Crash tests only: a named point where the process exits at once."""
    # Mounts /bench/* (the baseline route of bench/). Never enable in a real deployment.
    bench_routes_enabled: bool = False
    """Mount the benchmark baseline routes (benchmarks only)."""

    @model_validator(mode="before")
    @classmethod
    def _production_sends_email_by_smtp(cls, data: Any) -> Any:
        """Production's default email backend is SMTP: a file sink there would swallow every email."""
        if (
            isinstance(data, dict)
            and str(data.get("env", "")).lower() == Environment.production.value
            and data.get("email_backend") in (None, "")
        ):
            return {**data, "email_backend": EmailBackend.smtp}
        return data

    @model_validator(mode="after")
    def _refuse_missing_or_placeholder_secrets(self) -> Settings:
        """Outside development (test and production alike) every secret is given, none is a
        placeholder; production also names its services. Only development makes its own keys."""
        if self.env is Environment.development:
            return self
        required: list[tuple[str, object]] = [
            ("REFERLOOP_JWT_PRIVATE_KEYS", self.jwt_private_keys),
            ("REFERLOOP_FIELD_ENCRYPTION_KEYS", self.field_encryption_keys.get_secret_value().strip()),
        ]
        if self.env is Environment.production:
            required += [
                ("REFERLOOP_DATABASE_URL", self.database_url),
                ("REFERLOOP_REDIS_URL", self.redis_url),
            ]
        missing = [name for name, value in required if not value]
        if missing:
            raise ValueError(
                f"env={self.env.value} refuses to start without {', '.join(missing)} "
                "(only development generates its keys, under var/keys)"
            )
        placeholders = [
            f"REFERLOOP_{name.upper()}" for name, value in self._secret_values() if _is_placeholder(value)
        ]
        if placeholders:
            raise ValueError(
                f"env={self.env.value} refuses to start: {', '.join(placeholders)} holds a default or "
                "placeholder value; set a real secret"
            )
        return self

    def _secret_values(self) -> list[tuple[str, str]]:
        values: list[tuple[str, str]] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                values.append((name, value.get_secret_value()))
            elif isinstance(value, list):
                values += [(name, v.get_secret_value()) for v in value if isinstance(v, SecretStr)]
        return values

    @model_validator(mode="after")
    def _require_payout_credentials(self) -> Settings:
        if self.env is Environment.production:
            required: dict[PayoutProviderName, tuple[tuple[str, str], ...]] = {
                PayoutProviderName.manual: (),
                PayoutProviderName.razorpayx: (
                    ("REFERLOOP_RAZORPAYX_KEY_ID", self.razorpayx_key_id),
                    ("REFERLOOP_RAZORPAYX_KEY_SECRET", self.razorpayx_key_secret.get_secret_value()),
                    ("REFERLOOP_RAZORPAYX_ACCOUNT_NUMBER", self.razorpayx_account_number),
                    ("REFERLOOP_RAZORPAYX_WEBHOOK_SECRET", self.razorpayx_webhook_secret.get_secret_value()),
                ),
                PayoutProviderName.stripe: (
                    ("REFERLOOP_STRIPE_API_KEY", self.stripe_api_key.get_secret_value()),
                    ("REFERLOOP_STRIPE_WEBHOOK_SECRET", self.stripe_webhook_secret.get_secret_value()),
                ),
            }
            missing = [name for name, value in required[self.payout_provider] if not value]
            if missing:
                raise ValueError(f"payout provider {self.payout_provider} needs {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _production_delivers_for_real(self) -> Settings:
        if self.env is not Environment.production:
            return self
        if self.fault_inject:
            # A crash-test hook: in production it would kill the worker at a payout, every time.
            raise ValueError(
                "env=production refuses to start with REFERLOOP_FAULT_INJECT set (crash tests only)"
            )
        if self.email_backend is EmailBackend.file:
            raise ValueError(
                "env=production refuses to start with REFERLOOP_EMAIL_BACKEND=file (it writes every "
                "email, codes included, to local files); set smtp and the REFERLOOP_SMTP_* settings"
            )
        if (self.smtp_username or self.smtp_password.get_secret_value()) and self.smtp_starttls is not True:
            # Opportunistic STARTTLS falls back to plain text when the offer is stripped on the way.
            raise ValueError(
                "env=production refuses to send SMTP credentials without TLS: set REFERLOOP_SMTP_STARTTLS=true"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.env is Environment.development


# Values copied from examples and tutorials rather than generated. A field-encryption key setting is
# checked per key (`kid:material`), so `k1:changeme` is caught too.
_PLACEHOLDERS = frozenset(
    {
        "changeme", "change-me", "change_me", "changeit", "default", "secret", "password", "example",
        "test", "dev", "development", "xxx", "todo", "replace-me", "replaceme", "your-secret", "none",
    }
)  # fmt: skip


def _is_placeholder(value: str) -> bool:
    """An empty optional secret is not a placeholder; a set one must not be a well-known filler."""
    parts = [value, *(p.partition(":")[2] for p in value.split(",") if ":" in p)]
    return any(p.strip().strip("<>").lower() in _PLACEHOLDERS for p in parts if p.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
