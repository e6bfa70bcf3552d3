"""Member disputes about a referral, a transaction or a withdrawal, handled by support staff."""
