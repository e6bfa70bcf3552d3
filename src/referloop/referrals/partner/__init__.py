"""The partner API: universities' API keys (hashed, rotatable, revocable, rate-limited per key) and
outcome reports (JSON batches and CSV files), every call audited."""
