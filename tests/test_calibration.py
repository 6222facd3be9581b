"""cds.evaluation.calibration: temperature scaling, isotonic calibration, reliability / ECE, the calibrated network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cds.errors import ParameterError
from cds.evaluation.calibration import (
    Calibrator,
    brier_score,
    calibrated_network,
    calibration_table,
    expected_calibration_error,
    fit_calibrator,
    fit_temperature,
    logit,
    plot_reliability,
    reliability_curve,
)
from cds.evaluation.metrics import auroc


def _data(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from true log-odds; a model whose logits are ``scale`` times too large."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    z = scale * true_logit
    return y, z, 1 / (1 + np.exp(-z))


def test_temperature_recovers_the_overconfidence_factor() -> None:
    y, z, _ = _data(20000, 2.5, 0)
    assert fit_temperature(y, z) == pytest.approx(2.5, rel=0.06)
    y, z, _ = _data(20000, 0.5, 1)  # under-confident: T < 1 sharpens
    assert fit_temperature(y, z) == pytest.approx(0.5, rel=0.06)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_lowers_ece_on_held_out_data_and_keeps_ranking(method: str) -> None:
    y_fit, _, p_fit = _data(3000, 3.0, 2)
    y_test, _, p_test = _data(3000, 3.0, 3)
    cal = fit_calibrator(method, y_fit, p_fit, description="fit part")
    after = cal.transform(p_test)
    assert expected_calibration_error(y_test, after) < 0.5 * expected_calibration_error(y_test, p_test)
    assert auroc(y_test, after) == pytest.approx(auroc(y_test, p_test), abs=1e-12)
    order = np.argsort(p_test, kind="stable")
    assert np.all(np.diff(after[order]) >= 0)
    distinct = np.diff(p_test[order]) > 1e-9
    assert np.all(np.diff(after[order])[distinct] > 0), "the map must be strictly increasing (no new ties)"
    t = 0.3
    t2 = cal.transform_threshold(t)
    assert np.array_equal(p_test >= t, after >= t2)
    assert cal.fit == {"n": 3000, "n_positive": int(y_fit.sum()), "description": "fit part"}


def test_none_is_the_identity_and_round_trips_through_json() -> None:
    p = np.array([0.1, 0.5, 0.9])
    assert np.array_equal(fit_calibrator("none", [0, 1, 1], p).transform(p), p)
    for method in ("temperature", "isotonic"):
        y, _, pp = _data(500, 2.0, 4)
        cal = fit_calibrator(method, y, pp)
        back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        assert np.allclose(back.transform(pp), cal.transform(pp), atol=1e-7)


def test_temperature_uses_given_logits_not_saturated_probabilities() -> None:
    y, z, _ = _data(5000, 8.0, 5)
    p = 1 / (1 + np.exp(-z))  # many saturate to exactly 0 / 1 in float64
    with_logits = fit_calibrator("temperature", y, p, logits=z).params["temperature"]
    assert with_logits == pytest.approx(8.0, rel=0.08)
    with pytest.raises(ParameterError, match="logits"):
        fit_calibrator("temperature", y, p, logits=z[:10])


def test_ece_reliability_and_brier_by_hand() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.1, 0.3, 0.35, 0.8, 1.0]
    curve = reliability_curve(y, p, n_bins=2)
    assert curve["n"].tolist() == [3, 2]
    assert curve["mean_predicted"].tolist() == pytest.approx([0.25, 0.9])
    assert curve["observed"].tolist() == pytest.approx([1 / 3, 1.0])
    # (3 * |1/3 - 0.25| + 2 * |1 - 0.9|) / 5
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx((3 * (1 / 3 - 0.25) + 2 * 0.1) / 5)
    assert brier_score(y, p) == pytest.approx(np.mean((np.array(p) - np.array(y)) ** 2))
    empty = reliability_curve([0, 1], [0.05, 0.95], n_bins=10)
    assert empty["n"].sum() == 2 and empty["observed"].isna().sum() == 8
    assert expected_calibration_error([1, 1], [1.0, 1.0]) == 0.0


def test_calibration_table_has_cis_around_the_values() -> None:
    y, _, p = _data(400, 2.0, 6)
    cal = fit_calibrator("temperature", y, p)
    t = calibration_table(y, {"before": p, "after": cal.transform(p)}, n_boot=200)
    assert list(t.index) == ["before", "after"]
    for row in t.itertuples():
        assert row.ece_ci95[0] <= row.ece <= row.ece_ci95[1]
        assert row.brier_ci95[0] <= row.brier <= row.brier_ci95[1]
    assert t.loc["after", "ece"] < t.loc["before", "ece"]
    assert t.loc["after", "auroc"] == t.loc["before", "auroc"]


def test_bad_inputs_name_the_parameter() -> None:
    with pytest.raises(ParameterError, match="calibration_method.*'platt'"):
        fit_calibrator("platt", [0, 1], [0.2, 0.8])
    with pytest.raises(ParameterError, match="need both classes"):
        fit_calibrator("isotonic", [1, 1, 1], [0.2, 0.5, 0.8])
    with pytest.raises(ParameterError, match="3 scores for 2 labels"):
        fit_calibrator("temperature", [0, 1], [0.2, 0.5, 0.8])
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.2, 1.5])
    with pytest.raises(ParameterError, match="0/1"):
        brier_score([0, 2], [0.2, 0.5])
    with pytest.raises(ParameterError, match="calibration.method"):
        Calibrator.from_dict({"method": "beta"})
    assert logit([0.0, 1.0]).tolist() == pytest.approx([-16.118, 16.118], abs=1e-3)


@pytest.mark.parametrize("method", ["temperature", "isotonic", "none"])
def test_calibrated_network_matches_the_numpy_map_and_loads_from_a_monai_config(method: str) -> None:
    import torch
    from monai.bundle import ConfigParser

    from cds.models.explain import gradcam_map
    from cds.models.networks import sigmoid

    y, _, p = _data(300, 3.0, 7)
    cal = fit_calibrator(method, y, p)
    base_def = {"_target_": "cds.models.tasks.common2d.tabular_cnn2d", "in_channels": 1, "n_tabular": 0, "width": 4,
                "n_stages": 2}
    cfg = {"_target_": "cds.evaluation.calibration.calibrated_network", "method": cal.method, "params": cal.to_dict()["params"],
           "base": base_def}
    torch.manual_seed(0)
    net = ConfigParser({"net": cfg}).get_parsed_content("net", instantiate=True).eval()
    assert all(k.startswith("base.") for k in net.state_dict())
    assert net.last_layer == "base.features.stage1"
    x = torch.rand(6, 1, 16, 16)
    with torch.no_grad():
        raw = net.base(x)[:, 0].double().numpy()
        out = net(x)[:, 0].double().numpy()
    assert np.allclose(sigmoid(out), cal.transform(sigmoid(raw)), atol=1e-6)
    cam = gradcam_map(net, x[0, 0].numpy())
    assert cam.shape == (16, 16) and np.isfinite(cam).all()


def test_calibrated_network_passes_tabular_inputs() -> None:
    import torch

    from cds.models.networks import tabular_cnn2d

    base = tabular_cnn2d(n_tabular=2, width=4, n_stages=2).eval()
    net = calibrated_network(base, "temperature", {"temperature": 2.0}).eval()
    x, tab = torch.rand(3, 1, 16, 16), torch.rand(3, 2)
    with torch.no_grad():
        assert torch.allclose(net(x, tab=tab), base(x, tab=tab) / 2.0)
    with pytest.raises(ParameterError, match="calibration.method"):
        calibrated_network(base, "beta", {})


def test_plot_reliability_draws_one_curve_per_set() -> None:
    import matplotlib

    matplotlib.use("Agg")
    y, _, p = _data(300, 2.0, 8)
    fig = plot_reliability(y, {"before": p, "after": fit_calibrator("temperature", y, p).transform(p)})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "perfect calibration" and labels[1].startswith("before (ECE ")
    assert len(labels) == 3


def test_expected_calibration_error_equals_a_direct_computation() -> None:
    """The package's one ECE against the definition, written out with loops over cases and bins."""
    rng = np.random.default_rng(7)
    for n_bins in (1, 5, 10, 15):
        y = rng.integers(0, 2, 300)
        p = rng.random(300) ** 1.5
        p[:3] = [0.0, 1.0, 0.5]  # edges: 0 in the first bin, 1 in the last
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            members = [i for i in range(len(p)) if lo <= p[i] < hi or (b == n_bins - 1 and p[i] == 1.0)]
            if members:
                gap = abs(sum(y[i] for i in members) / len(members) - sum(p[i] for i in members) / len(members))
                total += len(members) / len(p) * gap
        assert expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(total, abs=1e-9), n_bins
