import pytest

from edgeresnet.errors import ConfigError, TargetError
from edgeresnet.targets import PRECISIONS, get_target, targets


def test_table_has_the_three_delegates_in_order():
    assert list(targets())[:3] == ["cpu", "edgetpu", "gpu"]


@pytest.mark.parametrize(
    "target,int8,expected_precision,expected_io",
    [
        ("cpu", True, "int8", "int8"),
        ("cpu", False, "fp32", "float32"),
        ("edgetpu", True, "int8", "uint8"),
        ("gpu", True, "fp16", "float32"),
    ],
)
def test_precision_and_io_defaults(target, int8, expected_precision, expected_io):
    t = get_target(target)
    p = t.precision_for(int8)
    assert p == expected_precision
    assert t.io_type_for(p) == expected_io


def test_edgetpu_never_offers_float():
    t = get_target("edgetpu")
    assert t.precisions == ("int8",)
    assert all(io in ("uint8", "int8") for io in t.int8_io_types)
    with pytest.raises(ConfigError):
        t.precision_for(False, "fp32")


def test_unknown_target_suggests_nearest():
    with pytest.raises(TargetError) as exc:
        get_target("edgtpu")
    msg = str(exc.value)
    assert "'edgetpu'" in msg and "\n" not in msg


def test_cpu_rejects_impossible_io():
    with pytest.raises(ConfigError, match="--io"):
        get_target("cpu").io_type_for("int8", "int16")


def test_every_target_precision_is_known():
    for t in targets().values():
        assert set(t.precisions) <= set(PRECISIONS)
