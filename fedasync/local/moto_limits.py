"""Quotas that a request alone does not show, enforced by patching moto's backends in the
embedded stack's moto process (`quotas.py` has the table of every quota and the request
checks)."""

from __future__ import annotations

import uuid
from typing import Any

from fedasync.local.quotas import SFN_HISTORY_MAX_EVENTS, SNS_FILTER_POLICIES_PER_TOPIC


def sns_limits() -> None:
    """Every subscription gets a publish (moto's topic read only the first page, 100), and a
    topic takes at most 200 subscriptions with a filter policy."""
    from moto.sns import models
    from moto.sns.exceptions import SNSException

    class FilterPolicyLimitExceeded(SNSException):
        code = "FilterPolicyLimitExceeded"

        def __init__(self) -> None:
            super().__init__(
                "Filter policy limit exceeded: a topic takes at most "
                f"{SNS_FILTER_POLICIES_PER_TOPIC} subscriptions with a filter policy"
            )

    def publish(self: Any, message: str, subject: str | None = None, **kwargs: Any) -> str:
        message_id = str(uuid.uuid4())
        for subscription in list(self.sns_backend._get_topic_subscriptions(self)):
            subscription.publish(message, message_id, subject=subject, **kwargs)
        self.sent_notifications.append(
            (message_id, message, subject, kwargs.get("message_attributes"), kwargs.get("group_id"))
        )
        return message_id

    original_set = models.SNSBackend.set_subscription_attributes

    def set_subscription_attributes(self: Any, arn: str, name: str, value: Any) -> None:
        subscription = self.subscriptions.get(arn)
        if name == "FilterPolicy" and value and subscription is not None:
            others = [
                s
                for s in self._get_topic_subscriptions(subscription.topic)
                if s.arn != arn and s.attributes.get("FilterPolicy")
            ]
            if len(others) >= SNS_FILTER_POLICIES_PER_TOPIC:
                if not subscription.attributes.get("FilterPolicy"):
                    self.unsubscribe(arn)  # AWS refuses the whole Subscribe
                raise FilterPolicyLimitExceeded()
        original_set(self, arn, name, value)

    setattr(models.Topic, "publish", publish)  # noqa: B010
    models.SNSBackend.set_subscription_attributes = set_subscription_attributes  # type: ignore[method-assign]


class HistoryLimitExceededError(RuntimeError):
    """Raised inside moto's interpreter: it ends the execution FAILED (States.Runtime)."""


def sfn_history_limit() -> None:
    """An execution whose history would pass 25,000 events fails, as on AWS."""
    from moto.stepfunctions.parser.api import HistoryEventType
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager

    original = EventManager.add_event
    closing = (
        HistoryEventType.ExecutionFailed,
        HistoryEventType.ExecutionAborted,
        HistoryEventType.ExecutionTimedOut,
    )

    def add_event(self: Any, context: Any, event_type: Any, *args: Any, **kwargs: Any) -> int:
        if len(self._history_event_list) >= SFN_HISTORY_MAX_EVENTS - 1 and (
            event_type not in closing
        ):
            raise HistoryLimitExceededError(
                f"the execution history reached {SFN_HISTORY_MAX_EVENTS} events"
            )
        return original(self, context, event_type, *args, **kwargs)

    EventManager.add_event = add_event  # type: ignore[method-assign]


def install() -> None:
    sns_limits()
    sfn_history_limit()
