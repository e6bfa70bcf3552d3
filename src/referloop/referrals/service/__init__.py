"""Referrals services, split by capability: catalogue, campaigns, codes (vanity codes, links,
devices), clicks (redirects and the click flusher), attribution."""
