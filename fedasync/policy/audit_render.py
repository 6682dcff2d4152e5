"""The call audit's report as lines for the terminal summary: the actions each principal
used, every refusal with the statement it needed, and the grants no call used."""

from __future__ import annotations

import json

from fedasync.policy.audit import SERVICE_ACTIONS, AuditReport


def render(report: AuditReport) -> list[str]:
    lines = [
        f"call audit: {report.calls} authorisations recorded, "
        f"{report.harness_calls} by the test harness (not judged), "
        f"{report.expected_refusals} refused as the tests expected"
    ]
    if report.unparsed:
        lines.append(f"  {report.unparsed} request(s) could not be parsed")
    lines.append("actions used, per principal (clients together):")
    for principal in sorted(report.used):
        actions = ", ".join(f"{a} ({n})" for a, n in sorted(report.used[principal].items()))
        lines.append(f"  {principal}: {actions}")
    if report.refusals:
        lines.append(
            f"REFUSED: {len(report.refusals)} kind(s) of request the deployed roles refuse:"
        )
        for refusal in report.refusals.values():
            some_tests = ", ".join(sorted(refusal.tests)[:3])
            lines.append(
                f"  {refusal.principal} {refusal.action} {refusal.resource} "
                f"x{refusal.count}: {refusal.reason}"
            )
            lines.append(f"    statement needed: {json.dumps(refusal.needed, sort_keys=True)}")
            lines.append(f"    in: {some_tests}")
    for allowed in report.unexpected_allows:
        lines.append(f"ALLOWED, though a test expected a refusal: {allowed}")
    if report.unused:
        lines.append(
            "granted but no recorded call used it (least privilege; not counting "
            f"{', '.join(SERVICE_ACTIONS)}, which AWS services use on the role's behalf):"
        )
        lines.extend(f"  {u}" for u in report.unused)
    return lines
