"""The withdrawal life cycle, split by capability:

- requests: members ask for and cancel withdrawals (policy: limits, KYC gate, cool-down);
- staff: approve, reject, record manual payouts, retry failed ones;
- payouts: the worker's submission to the provider, and applying the provider's reports;
- webhooks, sync: provider reports arriving by webhook, or fetched by `referloop payouts sync`;
- transitions: the state machine, audit and events; money: the ledger movements.
"""

from referloop.disputes.models import SubjectType
from referloop.disputes.subjects import register_subject
from referloop.payouts.withdrawals.service.queries import member_owns

# Members may open disputes about their own withdrawals.
register_subject(SubjectType.withdrawal, member_owns)
