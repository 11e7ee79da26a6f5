"""The resource model's fit (hwflow.resource_fit): a real Yosys point against the stored model,
the least-squares fit itself, and its input checks."""

import json

import pytest

from hwflow.hw.config import AccelConfig
from hwflow.mapping.accel_config import RESOURCE_FEATURES, estimate_resources, resource_fit
from hwflow.resource_fit import (
    POINTS,
    FitPoint,
    fit_model,
    fit_table,
    run_resource_fit,
    synth_point,
)

#: Not one of POINTS: a 2 x 4 engine, dense weights with the int4 path, act buffer of 512
#: words in block RAM, weight ring of 32 rows in LUT-RAM (Yosys: ~25 s).
NEW_POINT = FitPoint("p2l4-int4-mixed", "holdout",
                     dict(chains=2, chain_len=4, mem_ports=1, port_bytes=8, act_depth=512,
                          weight_depth=32, sparse=False, int4=True, transformer=False))


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A fresh hwflow cache, so that the Yosys run really happens."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HWFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def test_new_point_synthesized_is_predicted_within_the_stated_error(fresh_cache):
    assert NEW_POINT.name not in {p.name for p in POINTS}
    assert NEW_POINT.params not in [p.params for p in POINTS]
    row = synth_point(NEW_POINT)
    assert not row["cached"] and row["yosys_seconds"] > 0
    est = estimate_resources(NEW_POINT.config())
    got = row["measured"]
    # DSP and BRAM: exact analytic counts
    assert est["dsp"] == got["dsp"] == 2 * 4 + 3 * 2 + 1
    assert est["bram"] == got["bram"] and est["uram"] == got["uram"] == 0
    # LUT and FF: within the held-out error the stored model states for its own points
    model = resource_fit()["model"]
    for kind in ("lut", "ff"):
        stated = model[kind]["holdout_error"]["max_abs_pct"]
        err = 100 * abs(est[kind] - got[kind]) / got[kind]
        assert err <= stated, (kind, est[kind], got[kind], err, stated)
    # the same run again is a cache hit with the same figures
    again = synth_point(NEW_POINT)
    assert again["cached"] and again["measured"] == got


def _row(name, role, params, lut, ff):
    from hwflow.mapping.accel_config import resource_features

    cfg = AccelConfig(**params)
    return {"name": name, "role": role, "params": params, "features": resource_features(cfg),
            "measured": {"lut": lut, "ff": ff, "uram": 0,
                         **_dsp_bram(cfg)}, "yosys_seconds": 1.0, "cached": True}


def _dsp_bram(cfg):
    e = estimate_resources(cfg)
    return {"dsp": e["dsp"], "bram": e["bram"]}


def test_fit_recovers_known_coefficients_and_reports_holdout_error():
    # synthetic "measurements" from known coefficients over the real points' configurations:
    # the fit must return them and a zero error; a perturbed held-out point shows its error
    truth = {kind: {n: float(i + 1) * 10 for i, n in enumerate(RESOURCE_FEATURES[kind])}
             for kind in ("lut", "ff")}
    rows = []
    for p in POINTS:
        r = _row(p.name, p.role, p.params, 0, 0)
        for kind, coef in truth.items():
            r["measured"][kind] = sum(c * r["features"][n] for n, c in coef.items())
        rows.append(r)
    held = next(r for r in rows if r["role"] == "holdout")
    held["measured"]["lut"] *= 1.10                                     # 10 % off
    model = fit_model(rows)
    for kind, coef in truth.items():
        assert set(model[kind]["coefficients"]) == set(coef)
        for n, c in coef.items():
            assert model[kind]["coefficients"][n] == pytest.approx(c, abs=0.05)
    assert model["lut"]["fit_error"]["max_abs_pct"] < 0.05
    assert model["lut"]["holdout_error"]["max_abs_pct"] == pytest.approx(100 / 11, abs=0.05)
    assert model["ff"]["holdout_error"]["max_abs_pct"] < 0.05
    assert model["dsp"]["method"] == "analytic" and model["dsp"]["holdout_error"][
        "max_abs_pct"] == 0
    text = fit_table({"model": model, "points": rows, "tool": "t", "family": "xcup",
                      "options": "", "synth_seconds": 0})
    assert "lut" in text and "analytic" in text


def test_run_resource_fit_needs_holdout_and_enough_fit_points():
    with pytest.raises(ValueError, match="no held-out point"):
        run_resource_fit(points=[p for p in POINTS if p.role == "fit"], progress=False)
    with pytest.raises(ValueError, match="fit points needed"):
        run_resource_fit(points=POINTS[:2] + [NEW_POINT], progress=False)


def test_stored_model_is_the_fit_of_its_stored_points():
    # re-fitting the stored measurements reproduces the stored coefficients and errors
    data = resource_fit()
    refit = fit_model(data["points"])
    assert all(data["model"][k]["method"] == "analytic" for k in ("dsp", "bram", "uram"))
    for kind in ("lut", "ff"):
        for n, c in data["model"][kind]["coefficients"].items():
            assert refit[kind]["coefficients"][n] == pytest.approx(c, abs=1e-3)
        assert refit[kind]["holdout_error"] == data["model"][kind]["holdout_error"]
    assert json.loads(json.dumps(refit)) == refit        # JSON-serializable as written
