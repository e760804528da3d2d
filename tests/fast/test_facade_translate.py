"""The facades' shared conversions, at and past their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from sandboxd.api.facades import translate


@pytest.mark.parametrize(
    ("given", "cores"), [("500m", 0.5), ("1", 1.0), ("0.5", 0.5), ("2", 2.0), (2, 2.0), ("1m", 0.001)]
)
def test_cpu_quantities(given: str | int, cores: float) -> None:
    assert translate.cpu_cores(given) == cores


@pytest.mark.parametrize("given", ["", "0", "0m", "-1", "1Gi", "five", "1.5.2"])
def test_bad_cpu_quantities_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="quantity|more than zero"):
        translate.cpu_cores(given)


@pytest.mark.parametrize(
    ("given", "mib"),
    [("512Mi", 512), ("2Gi", 2048), ("1G", 954), ("512M", 489), ("536870912", 512), (1, 1), ("1.5Gi", 1536)],
)
def test_memory_quantities_round_up_to_mib(given: str | int, mib: int) -> None:
    assert translate.memory_mib(given) == mib


@pytest.mark.parametrize("given", ["", "0Mi", "12Xi", "Mi", "-5Mi"])
def test_bad_memory_quantities_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="quantity|more than zero"):
        translate.memory_mib(given)


def test_milliseconds_round_timeouts_up() -> None:
    assert translate.ms_to_seconds(300_000) == 300
    assert translate.ms_to_seconds(1) == 1
    assert translate.ms_to_seconds(1001) == 2
    assert translate.seconds_to_ms(1.5) == 1500


def test_times_round_trip() -> None:
    when = datetime(2026, 12, 1, 6, 17, 31, 72000, tzinfo=UTC)
    assert translate.rfc3339(when) == "2026-12-01T06:17:31.072000Z"
    assert translate.parse_rfc3339("2026-12-01T06:17:31.072Z") == when
    assert translate.parse_rfc3339("2026-12-01T08:17:31.072+02:00") == when
    assert translate.from_epoch_ms(translate.epoch_ms(when) or 0) == when
    assert translate.rfc3339(when.astimezone(timezone(timedelta(hours=5)))) == "2026-12-01T06:17:31.072000Z"
    assert translate.epoch_ms(None) is None and translate.rfc3339(None) is None


@pytest.mark.parametrize("given", ["2026-12-01T06:17:31", "tomorrow", ""])
def test_times_without_a_zone_or_unparseable_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        translate.parse_rfc3339(given)
