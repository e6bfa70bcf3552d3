"""Errors of rewards; each renders as problem+json with a stable code."""

from __future__ import annotations

from referloop.core.errors import Conflict, InvalidInput, NotFound


class RewardRuleNotFound(NotFound):
    code = "reward_rule_not_found"
    title = "Reward rule not found"


class RewardRuleExists(Conflict):
    code = "reward_rule_exists"
    title = "Reward rule exists"


class RewardRuleInvalid(InvalidInput):
    code = "reward_rule_invalid"
    title = "Invalid reward rule"
