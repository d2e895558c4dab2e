"""How ``greenroom tasks`` shows concurrency and rate limits, retry_on and an age limit (test contracts)."""

from __future__ import annotations

from shared.cli.tasks import contract_json, contract_text
from shared.settings import load_settings
from tests.e2e.policy_tasks import FLAKY, FRESH, LIMITED, RATED


def test_limits_and_retry_policies_are_shown_with_their_source() -> None:
    settings = load_settings(_env_file=None)

    limited = [line.split() for line in contract_text(LIMITED, settings).splitlines()]
    rated = [line.split() for line in contract_text(RATED, settings).splitlines()]
    flaky = [line.split() for line in contract_text(FLAKY, settings).splitlines()]
    fresh = [line.split() for line in contract_text(FRESH, settings).splitlines()]

    assert ["concurrency_limit", "2", "contract"] in limited
    assert ["store_results", "no", "contract"] in limited
    assert ["cancellable", "no", "contract"] in limited
    assert ["rate_limit", "4", "per", "2", "s", "contract"] in rated
    assert ["retry_on", "ConnectionError", "contract"] in flaky
    assert ["max_backoff_seconds", "0.2", "s", "contract"] in flaky
    assert ["max_age_seconds", "1", "s", "contract"] in fresh
    assert contract_json(RATED, settings)["policies"]["rate_limit"] == {
        "value": {"count": 4, "per_seconds": 2.0},
        "source": "contract",
    }
    assert contract_json(LIMITED, settings)["arguments"][2] == {
        "name": "seconds",
        "type": "number",
        "required": False,
        "default": 0.0,
        "bounds": {"minimum": 0, "maximum": 30},
    }


def test_a_min_backoff_above_the_settings_max_raises_the_max() -> None:
    settings = load_settings(_env_file=None, TASK_MAX_BACKOFF_SECONDS=0.05, TASK_MIN_BACKOFF_SECONDS=0.01)

    policies = contract_json(FLAKY, settings)["policies"]

    assert policies["min_backoff_seconds"] == {"value": 0.1, "source": "contract"}
    assert policies["max_backoff_seconds"] == {"value": 0.2, "source": "contract"}
