"""Funnel analytics services: `rollup` (events -> milestones -> daily counters), `clicks` (the click
job), `funnel` (what the API serves)."""
