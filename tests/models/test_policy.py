"""The retrain's warm-start policy, on a real (tiny) bundle: k and the network come from the
promoted model; without one, nothing is decided for the user."""

from __future__ import annotations

from pathlib import Path

from geoseg.models.policy import retrain_fields
from tests.helpers import K, make_bundle


def test_first_model_takes_the_users_settings_only() -> None:
    assert retrain_fields(None, None, warm_start=True) == {"k": None}
    assert retrain_fields(None, 7, warm_start=True) == {"k": 7}


def test_retrain_keeps_the_promoted_k_and_warm_starts_its_network(tmp_path: Path) -> None:
    previous = make_bundle(tmp_path / "promoted", ["red", "green", "blue"], "uint8", 110.0, 50.0)
    warm = retrain_fields(previous, None, warm_start=True)
    assert warm == {
        "k": K,
        "init_from": str(previous),
        "method": "iic",
        "k_a": 8,
        "subheads": 1,
        "preset": "small",
        "padding": "zeros",  # bundles of before the setting: the zeros they were trained with
    }
    assert retrain_fields(previous, K + 2, warm_start=False) == {"k": K + 2}  # a larger k is the user's
