"""Settings every deployment shares (the secret comes from the environment)."""

PREFERRED_URL_SCHEME = "https"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
MAX_CONTENT_LENGTH = 2 * 1024 * 1024
SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
