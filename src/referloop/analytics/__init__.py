"""Funnel analytics: clicks -> sign-ups -> applications -> enrolments -> rewarded, per day, program,
campaign, referrer and university, served from rollup tables that event consumers and a periodic
click job keep current (never from raw clicks at request time)."""
