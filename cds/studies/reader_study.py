"""Reader studies: how clinicians' reads change when they see the AI, reader by reader (Yu et al. 2024).

Reads come from the explorer's append-only review log (:class:`cds.review.store.ReviewStore`): each
reader records a ``pre-ai`` read of a case (finding present yes/no, confidence 0-100) and, after the
AI result is revealed, a ``post-ai`` read. The log holds what the reader saw (the AI probability and
threshold in the finding snapshot) but not the truth; the reference standard comes from a CSV with
``finding_id`` and ``truth`` (0/1) columns (:func:`load_truth`).

Analysis (:func:`load_reads` -> :func:`paired_reads` -> tables):

- :func:`per_reader` -- for every reader, sensitivity, specificity and AUROC before and after AI,
  and the change, each with a 95 % percentile bootstrap CI over cases (the same resampled cases
  for before and after, so the change's CI is paired). The AUROC uses the confidence as a score:
  ``score = 50 + confidence / 2`` for "present" and ``50 - confidence / 2`` for "absent", i.e. a
  0-100 scale from "certainly absent" to "certainly present" (the explorer's confidence is the
  reader's confidence in the call they made).
- :func:`ai_right_wrong` -- accuracy before vs after on the cases where the AI's call (probability
  >= its threshold) was right, and where it was wrong; per reader and for all readers together.
- :func:`spread` -- how much the effect differs between readers (SD, range, readers helped /
  hurt with CIs excluding 0) and its rank correlation with the pre-AI value and, where known, with
  experience; :func:`plot_spread` draws it.
- :func:`mrmc_auroc` -- the multi-reader multi-case analysis of the change in AUROC with AI
  (Obuchowski-Rockette with Hillis's degrees of freedom, random readers and random cases, plus the
  fixed-reader and fixed-case variants; :mod:`cds.studies.mrmc`), on all cases and separately on
  the cases where the AI was right and wrong, with each reader's change and its CI and the SD of
  the effect between readers net of case noise; :func:`format_mrmc` is its one-line-per-subset view.

Simulated readers (:func:`simulate_readers`) write reads through the same ``ReviewStore`` API, so
the analysis reads exactly the format the explorer writes. **Every simulated read carries the
comment** :data:`SIMULATED_TAG`; every table built from them has a ``data`` column saying
``SIMULATED READERS`` and every plot says so in its title. The simulation model, per reader ``r``
and case ``i`` (signal-detection form):

- evidence before AI ``e_ri = d_r (y_i - 1/2) + u_i + eps_ri`` with reader skill ``d_r`` (d'),
  a case effect ``u_i ~ N(0, case_sd)`` shared by all readers (some cases look positive to
  everyone) and ``eps_ri ~ N(0, 1)``;
- the AI's evidence ``a_i = clip(logit(p_i) - logit(t), -3, 3)`` (its probability against its threshold);
- evidence after AI ``e'_ri = e_ri + s_r a_i`` with a per-reader susceptibility ``s_r``;
- call "present" when evidence > the reader's criterion ``k_r``; confidence =
  ``round(100 |2 Phi(e - k_r) - 1|)``;
- experience (years) is drawn independently of skill and susceptibility: following Yu 2024 the
  effect of AI varies by reader and is not predicted by experience. Because readers move towards
  the AI's call, accurate AI helps and inaccurate AI hurts; both follow from the model, they are not
  added separately.

Cases (:func:`cases_from_model`, :func:`simulated_cases`): the default reader study uses the
shipped ``pneumonia`` model's real predictions on real PneumoniaMNIST validation images (truth =
the data set's labels), so AI errors are the model's real errors; only the readers are simulated.
``simulated_cases`` makes purely synthetic cases with a chosen AI accuracy.

Yu F. et al. Heterogeneity and predictors of the effects of AI assistance on radiologists.
Nat Med 2024 (140 radiologists, 324 chest X-ray cases).

>>> SIMULATED_TAG
'SIMULATED READER'
>>> confidence_score([True, False], [80, 80]).tolist()
[90.0, 10.0]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cds.codes import SNOMED
from cds.errors import ParameterError
from cds.params import Param

__all__ = [
    "SIMULATED_TAG",
    "SIMULATED_LABEL",
    "PARAMETERS",
    "SimulatedStudy",
    "confidence_score",
    "cases_from_model",
    "simulated_cases",
    "simulate_readers",
    "default_truth_path",
    "readers_path",
    "load_readers",
    "study_inputs",
    "load_reads",
    "load_truth",
    "paired_reads",
    "per_reader",
    "format_per_reader",
    "ai_right_wrong",
    "spread",
    "plot_spread",
    "banner",
    "mrmc_auroc",
    "format_mrmc",
]

#: Comment prefix of every simulated read in the review log.
SIMULATED_TAG = "SIMULATED READER"
#: What tables and plots built from simulated reads say.
SIMULATED_LABEL = "SIMULATED READERS"
METRICS = ("sensitivity", "specificity", "auroc")

#: Parameters of notebooks/reader_study.ipynb.
PARAMETERS: dict[str, Param] = {
    "store_path": Param(str, None, nullable=True, hint="a review log (.jsonl); None simulates one"),
    "truth_path": Param(str, None, nullable=True, hint="CSV with finding_id, truth; None: <store>.truth.csv"),
    "out_dir": Param(str, "out/reader_study"),
    "case_source": Param(str, "pneumonia", check=lambda v: v in ("pneumonia", "simulated"),
                         hint="'pneumonia' (model on real images) or 'simulated'"),
    "data_dir": Param(str, None, nullable=True),
    "n_readers": Param(int, 8, check=lambda v: 2 <= v <= 200, hint="2-200"),
    "n_cases": Param(int, 120, check=lambda v: 10 <= v <= 5000, hint="10-5000"),
    "ai_accuracy": Param(float, 0.8, check=lambda v: 0.5 <= v < 1.0, hint="0.5 to < 1 (simulated cases only)"),
    "prevalence": Param(float, 0.5, check=lambda v: 0.0 < v < 1.0, hint="0-1 (simulated cases only)"),
    "n_boot": Param(int, 500, check=lambda v: 50 <= v <= 20000, hint="50-20000"),
    "seed": Param(int, 0, check=lambda v: v >= 0, hint=">= 0"),
}


def confidence_score(present: Sequence[bool] | np.ndarray, confidence: Sequence[float] | np.ndarray) -> np.ndarray:
    """A 0-100 score from "certainly absent" (0) to "certainly present" (100): ``50 +/- confidence / 2``."""
    pr = np.asarray(present, dtype=bool)
    c = np.asarray(confidence, dtype=float)
    return np.where(pr, 50.0 + c / 2.0, 50.0 - c / 2.0)


def _uid(text: str) -> str:
    return "2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:30], 16))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(q) - np.log1p(-q)


# ------------------------------------------------------------------------------------------- cases
_CASE_COLUMNS = ["case_id", "patient_id", "study_uid", "truth", "ai_probability", "ai_threshold", "ai_band_low",
                 "ai_band_high", "model_id", "model_version", "code_system", "code", "display", "source"]


def cases_from_model(task: str = "pneumonia", data_dir: str | Path | None = None, bundle: Any = None,
                     n_cases: int = 120, seed: int = 0, enrich_ai_errors: bool = True) -> pd.DataFrame:
    """Reader-study cases: the shipped ``pneumonia`` model's predictions on real validation images.

    ``data_dir`` is a MedMNIST-style folder or ``.npz``; ``None`` means the small PneumoniaMNIST subset
    that ships with cds (:func:`cds.locations.sample_data_file`), enough to demonstrate the study. ``n_cases`` images come from the ``val_`` (or ``test_``) arrays, never from the training arrays;
    truth is the data set's label. With ``enrich_ai_errors`` every image the AI gets wrong (at its
    card threshold) is included first (up to half the cases), as reader studies enrich for hard
    cases: the AI is then wrong more often than in practice. The rest are drawn (seeded) to make
    about half of all cases positive.
    """
    from cds.models.bundle import load_bundle
    from cds.models.networks import predict_logits, sigmoid
    from cds.models.tasks import pneumonia
    from cds.models.tasks.inputs import prepare_image

    if task != "pneumonia":
        raise ParameterError("case_source", f"{task!r}: model-based cases are made for 'pneumonia' only")
    if data_dir is None:
        from cds.locations import sample_data_file

        data_dir = sample_data_file("pneumoniamnist")
    images, labels, used, path = pneumonia.load_split(data_dir, "auto")
    if used == "train":
        raise ParameterError("data_dir", f"{path}: has only train_ arrays (the model's training images)")
    if n_cases > len(labels):
        raise ParameterError("n_cases", f"{n_cases} cases asked; {path} has {len(labels)} {used}_ images")
    b = load_bundle(bundle if bundle is not None else pneumonia.default_bundle_dir())
    card = b.model_card
    x_all = np.stack([prepare_image(a, pneumonia.IMAGE_SIZE) for a in images])
    p_all = sigmoid(predict_logits(b.network(), x_all))
    wrong = (p_all >= float(card.threshold)) != labels.astype(bool)
    rng = np.random.default_rng([seed, 7])
    chosen = np.flatnonzero(wrong)[: n_cases // 2] if enrich_ai_errors else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    n_pos = max(0, min(int(round(n_cases / 2)) - int(labels[chosen].sum()), int(labels[rest].sum())))
    pos, neg = rest[labels[rest] == 1], rest[labels[rest] == 0]
    n_neg = n_cases - len(chosen) - n_pos
    if n_neg > len(neg):
        n_neg, n_pos = len(neg), n_cases - len(chosen) - len(neg)
    idx = np.sort(np.concatenate([chosen, rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]))
    p = p_all[idx]
    band = card.indeterminate or (None, None)
    out = card.outputs[0]
    rows = []
    for k, i in enumerate(idx):
        cid = f"{used}_{i:05d}"
        rows.append({"case_id": cid, "patient_id": f"medmnist-{used}-{i:05d}", "study_uid": _uid(f"{path.name}:{cid}"),
                     "truth": int(labels[i]), "ai_probability": round(float(p[k]), 6),
                     "ai_threshold": card.threshold, "ai_band_low": band[0], "ai_band_high": band[1],
                     "model_id": b.model_id, "model_version": b.version, "code_system": out.code_system,
                     "code": out.code, "display": out.display,
                     "source": f"{b.model_id} {b.version} on {path.name} {used}_ (real images and labels"
                               + (f"; enriched with all {int(wrong.sum())} AI errors)" if enrich_ai_errors else ")")})
    return pd.DataFrame(rows, columns=_CASE_COLUMNS)


def simulated_cases(n_cases: int = 120, prevalence: float = 0.5, ai_accuracy: float = 0.8,
                    seed: int = 0) -> pd.DataFrame:
    """Purely synthetic cases: truth with ``prevalence``, AI probabilities with expected accuracy ``ai_accuracy``.

    AI logit ``= d (y - 1/2) + N(0, 1)`` with ``d = 2 Phi^-1(ai_accuracy)``, threshold 0.5.

    >>> c = simulated_cases(4000, ai_accuracy=0.8, seed=1)
    >>> abs(float(((c.ai_probability >= 0.5) == c.truth).mean()) - 0.8) < 0.03
    True
    """
    from scipy.stats import norm

    if not 0.5 <= ai_accuracy < 1.0:
        raise ParameterError("ai_accuracy", f"{ai_accuracy!r}: use 0.5 to < 1")
    if not 0.0 < prevalence < 1.0:
        raise ParameterError("prevalence", f"{prevalence!r}: use a number between 0 and 1")
    rng = np.random.default_rng([seed, 11])
    y = (rng.random(n_cases) < prevalence).astype(int)
    d = 2.0 * norm.ppf(ai_accuracy)
    z = d * (y - 0.5) + rng.normal(0.0, 1.0, n_cases)
    p = 1.0 / (1.0 + np.exp(-z))
    rows = [{"case_id": f"sim-case-{i:04d}", "patient_id": f"sim-patient-{i:04d}", "study_uid": _uid(f"sim:{seed}:{i}"),
             "truth": int(y[i]), "ai_probability": round(float(p[i]), 6), "ai_threshold": 0.5, "ai_band_low": None,
             "ai_band_high": None, "model_id": "simulated-ai", "model_version": "0", "code_system": SNOMED,
             "code": "233604007", "display": "Pneumonia",
             "source": f"SIMULATED cases (prevalence {prevalence}, AI accuracy {ai_accuracy}, seed {seed})"}
            for i in range(n_cases)]
    return pd.DataFrame(rows, columns=_CASE_COLUMNS)


def _finding(row: Any) -> Any:
    from cds.finding import Finding

    band = None
    if row.ai_band_low is not None and row.ai_band_high is not None and not pd.isna(row.ai_band_low):
        band = (float(row.ai_band_low), float(row.ai_band_high))
    return Finding(patient_id=row.patient_id, study_uid=row.study_uid, code_system=row.code_system, code=row.code,
                   display=row.display, model_id=row.model_id, model_version=str(row.model_version),
                   probability=float(row.ai_probability), threshold=float(row.ai_threshold), indeterminate=band)


# -------------------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class SimulatedStudy:
    """Where :func:`simulate_readers` wrote the reads, the truth and the simulated readers."""

    store_path: Path
    truth_path: Path
    readers_path: Path
    readers: pd.DataFrame
    n_reads: int


def default_truth_path(store_path: str | Path) -> Path:
    """``<store>.truth.csv`` next to the review log.

    >>> default_truth_path("out/reads.jsonl").name
    'reads.truth.csv'
    """
    p = Path(store_path)
    return p.with_name(p.stem + ".truth.csv")


def readers_path(store_path: str | Path) -> Path:
    """``<store>.readers.csv`` next to the review log (who the readers are, where known).

    >>> readers_path("out/reads.jsonl").name
    'reads.readers.csv'
    """
    p = Path(store_path)
    return p.with_name(p.stem + ".readers.csv")


_readers_path = readers_path


def load_readers(store_path: str | Path) -> pd.DataFrame | None:
    """The readers table next to a review log (:func:`readers_path`), or ``None`` when there is none."""
    p = readers_path(store_path)
    return pd.read_csv(p) if p.is_file() else None


def study_inputs(store_path: str | None = None, truth_path: str | None = None, out_dir: str | Path = "out/reader_study",
                 case_source: str = "pneumonia", data_dir: str | Path | None = None, n_readers: int = 8,
                 n_cases: int = 120, ai_accuracy: float = 0.8, prevalence: float = 0.5, seed: int = 0,
                 ) -> tuple[Path, Path, pd.DataFrame | None]:
    """The notebook's inputs: ``(review log, truth CSV, readers table or None)``.

    With ``store_path`` these are that log, ``truth_path`` (default :func:`default_truth_path`) and
    :func:`load_readers`. Without it, SIMULATED READERS are written into ``out_dir``: on the
    ``pneumonia`` model's predictions for real images (:func:`cases_from_model`; ``data_dir`` None: the
    shipped sample subset) or on fully simulated cases (:func:`simulated_cases`).

    >>> store, truth, readers = study_inputs(out_dir=getfixture("tmp_path"), case_source="simulated",
    ...                                      n_readers=2, n_cases=20)
    >>> store.name, truth.name, len(readers)
    ('simulated_reads.jsonl', 'simulated_reads.truth.csv', 2)
    """
    if store_path is not None:
        store = Path(store_path)
        return store, (Path(truth_path) if truth_path else default_truth_path(store)), load_readers(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if case_source == "pneumonia":
        cases = cases_from_model("pneumonia", data_dir, n_cases=n_cases, seed=seed)
    elif case_source == "simulated":
        cases = simulated_cases(n_cases, prevalence=prevalence, ai_accuracy=ai_accuracy, seed=seed)
    else:
        raise ParameterError("case_source", f"{case_source!r}: use 'pneumonia' or 'simulated'")
    sim = simulate_readers(cases, out / "simulated_reads.jsonl", n_readers=n_readers, seed=seed, overwrite=True)
    return sim.store_path, sim.truth_path, sim.readers


def _clear_simulated_store(path: Path) -> None:
    from cds.review.store import ReviewStore

    store = ReviewStore(path)
    real = [a for a in store.actions() if not str(a.get("comment") or "").startswith(SIMULATED_TAG)]
    if real or store.problems:
        raise ParameterError("store_path", f"{path} holds {len(real)} action(s) that are not simulated reads "
                                           f"(or {len(store.problems)} unreadable lines); it is never overwritten")
    for p in (path, default_truth_path(path), _readers_path(path)):
        if p.exists():
            p.unlink()


def simulate_readers(cases: pd.DataFrame, store_path: str | Path, n_readers: int = 8, seed: int = 0,
                     skill_range: tuple[float, float] = (0.8, 2.5),
                     susceptibility_range: tuple[float, float] = (0.0, 0.6), case_sd: float = 0.6,
                     criterion_sd: float = 0.3, overwrite: bool = False, progress: bool = False) -> SimulatedStudy:
    """Write simulated pre- and post-AI reads of every case by ``n_readers`` readers into a review log.

    The model is in the module docstring. Reads go through :meth:`ReviewStore.record_read` (pre-AI
    then post-AI per case) with the comment ``"SIMULATED READER ..."``; the truth goes to
    ``<store>.truth.csv`` and the readers' simulated parameters to ``<store>.readers.csv``.
    ``overwrite=True`` replaces an earlier *simulated* log; a log holding any other action is never
    touched.
    """
    from scipy.stats import norm

    from cds.review.store import ReviewStore

    missing = [c for c in _CASE_COLUMNS if c not in cases.columns]
    if missing:
        raise ParameterError("cases", f"missing column(s) {', '.join(missing)} (use cases_from_model or "
                                      "simulated_cases)")
    if len(cases) == 0:
        raise ParameterError("cases", "no cases")
    path = Path(store_path)
    if path.exists():
        if not overwrite:
            raise ParameterError("store_path", f"{path} exists; pass overwrite=True to replace a simulated log")
        _clear_simulated_store(path)
    rng = np.random.default_rng([seed, 3])
    n = len(cases)
    y = cases["truth"].to_numpy().astype(int)
    readers = pd.DataFrame({
        "reader": [f"sim-reader-{r + 1:02d}" for r in range(n_readers)],
        "skill_dprime": rng.uniform(*skill_range, n_readers).round(3),
        "criterion": rng.normal(0.0, criterion_sd, n_readers).round(3),
        "ai_susceptibility": rng.uniform(*susceptibility_range, n_readers).round(3),
        "experience_years": rng.integers(1, 31, n_readers),
        "data": SIMULATED_LABEL,
    })
    u = rng.normal(0.0, case_sd, n)
    eps = rng.normal(0.0, 1.0, (n_readers, n))
    a = np.clip(_logit(cases["ai_probability"].to_numpy(float)) - _logit(cases["ai_threshold"].to_numpy(float)),
                -3.0, 3.0)
    findings = [_finding(r) for r in cases.itertuples(index=False)]
    store = ReviewStore(path)
    comment = f"{SIMULATED_TAG} (cds.studies.reader_study.simulate_readers, seed {seed}); not a clinician's read"
    it = range(n_readers)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="simulated readers")
    n_reads = 0
    for r in it:
        rd = readers.iloc[r]
        pre = rd.skill_dprime * (y - 0.5) + u + eps[r]
        post = pre + rd.ai_susceptibility * a
        for i, f in enumerate(findings):
            for phase, e in (("pre-ai", pre[i]), ("post-ai", post[i])):
                margin = float(e - rd.criterion)
                conf = int(round(100.0 * abs(2.0 * norm.cdf(margin) - 1.0)))
                store.record_read(f, rd.reader, phase, margin > 0, min(max(conf, 0), 100), comment=comment)
                n_reads += 1
    truth = cases.assign(finding_id=[f.id for f in findings])
    truth = truth[["finding_id", *_CASE_COLUMNS]]
    truth.to_csv(default_truth_path(path), index=False)
    readers.to_csv(_readers_path(path), index=False)
    return SimulatedStudy(path, default_truth_path(path), _readers_path(path), readers, n_reads)


# -------------------------------------------------------------------------------------------- reads
def load_reads(store_path: str | Path) -> pd.DataFrame:
    """The reader-study reads of a review log: the latest read per reader, finding and phase.

    Columns: reader, finding_id, patient_id, phase, present, confidence, score (:func:`confidence_score`),
    ai_probability, ai_threshold, ai_interpretation, simulated, recorded.
    """
    from cds.review.store import ReviewStore

    p = Path(store_path)
    if not p.is_file():
        raise ParameterError("store_path", f"{p}: no such review log")
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for a in ReviewStore(p).actions():
        if a.get("action") != "read" or not a.get("read"):
            continue
        reader = (a.get("reviewer") or {}).get("reference", "").split("/")[-1]
        latest[(reader, a["finding_id"], a["read"]["phase"])] = a
    rows = []
    for (reader, fid, phase), a in latest.items():
        snap = a.get("finding") or {}
        rows.append({"reader": reader, "finding_id": fid, "patient_id": snap.get("patient_id"), "phase": phase,
                     "present": bool(a["read"]["finding_present"]), "confidence": int(a["read"]["confidence"]),
                     "ai_probability": snap.get("probability"), "ai_threshold": snap.get("threshold"),
                     "ai_interpretation": snap.get("interpretation"),
                     "simulated": str(a.get("comment") or "").startswith(SIMULATED_TAG), "recorded": a.get("recorded")})
    cols = ["reader", "finding_id", "patient_id", "phase", "present", "confidence", "score", "ai_probability",
            "ai_threshold", "ai_interpretation", "simulated", "recorded"]
    df = pd.DataFrame(rows, columns=[c for c in cols if c != "score"])
    df.insert(6, "score", confidence_score(df["present"].to_numpy(bool), df["confidence"].to_numpy(float)))
    return df[cols].sort_values(["reader", "finding_id", "phase"], kind="stable").reset_index(drop=True)


def load_truth(truth_path: str | Path) -> pd.DataFrame:
    """The reference standard: a CSV with ``finding_id`` and ``truth`` (0/1) columns."""
    p = Path(truth_path)
    if not p.is_file():
        raise ParameterError("truth_path", f"{p}: no such file (a CSV with columns finding_id, truth)")
    df = pd.read_csv(p, dtype={"finding_id": str})
    for col in ("finding_id", "truth"):
        if col not in df.columns:
            raise ParameterError("truth_path", f"{p}: missing column {col!r}")
    if not df["truth"].isin([0, 1]).all():
        raise ParameterError("truth_path", f"{p}: column 'truth' must hold 0/1")
    if df["finding_id"].duplicated().any():
        raise ParameterError("truth_path", f"{p}: finding_id {df['finding_id'][df['finding_id'].duplicated()].iloc[0]} "
                                           "appears twice")
    return df


def paired_reads(reads: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per reader and case with both reads, the truth, the AI call and whether it was right.

    Cases without truth and reads without a partner phase are left out and counted in
    ``df.attrs["left_out"]``. The AI call is ``ai_probability >= ai_threshold`` from what the
    reader was shown (the log's finding snapshot).
    """
    pre = reads[reads["phase"] == "pre-ai"]
    post = reads[reads["phase"] == "post-ai"]
    both = pre.merge(post[["reader", "finding_id", "present", "confidence", "score", "simulated"]],
                     on=["reader", "finding_id"], how="inner", suffixes=("_pre", "_post"))
    unpaired = len(pre) + len(post) - 2 * len(both)
    t = truth.set_index("finding_id")["truth"]
    has_truth = both["finding_id"].isin(t.index)
    no_truth = int((~has_truth).sum())
    both = both[has_truth].copy()
    both["truth"] = both["finding_id"].map(t).astype(int)
    prob, thr = both["ai_probability"].astype(float), both["ai_threshold"].astype(float)
    both["ai_call"] = np.where(thr.notna(), prob >= thr, both["ai_interpretation"] == "positive")
    both["ai_correct"] = both["ai_call"].astype(int) == both["truth"]
    both["simulated"] = both["simulated_pre"] & both["simulated_post"]
    cols = ["reader", "finding_id", "patient_id", "truth", "ai_probability", "ai_threshold", "ai_call", "ai_correct",
            "present_pre", "confidence_pre", "score_pre", "present_post", "confidence_post", "score_post", "simulated"]
    out = both[cols].sort_values(["reader", "finding_id"], kind="stable").reset_index(drop=True)
    out.attrs["left_out"] = {"reads_without_partner_phase": int(unpaired), "reader_cases_without_truth": no_truth}
    return out


def _label(paired: pd.DataFrame) -> str:
    if len(paired) and paired["simulated"].all():
        return SIMULATED_LABEL
    if paired["simulated"].any():
        return "MIXED: real and SIMULATED reads"
    return "real reads"


def banner(paired: pd.DataFrame) -> str:
    """A one-line statement of what the reads are (shown above every table)."""
    lab = _label(paired)
    if lab == SIMULATED_LABEL:
        return (f"*** {SIMULATED_LABEL}: every read here was generated by cds.studies.reader_study.simulate_readers; no "
                "clinician made them. The numbers show the simulation's assumptions, not evidence. ***")
    if lab.startswith("MIXED"):
        return f"*** {lab}: simulated reads are mixed in; separate them before drawing conclusions. ***"
    return "Reads recorded by clinicians in the review log."


# ------------------------------------------------------------------------------------------ metrics
def _sens(y: np.ndarray, call: np.ndarray) -> float:
    y = y.astype(bool)
    return float(call[y].mean()) if y.any() else float("nan")


def _spec(y: np.ndarray, call: np.ndarray) -> float:
    y = y.astype(bool)
    return float((~call[~y]).mean()) if (~y).any() else float("nan")


def _metric(name: str, y: np.ndarray, call: np.ndarray, score: np.ndarray) -> float:
    from cds.evaluation.metrics import auroc

    if name == "sensitivity":
        return _sens(y, call)
    if name == "specificity":
        return _spec(y, call)
    return auroc(y, score)


def _paired_stat(metric: str, which: str) -> Any:
    """``stat(y, call_pre, call_post, score_pre, score_post)`` for ``which`` = pre, post or change."""

    def stat(y: np.ndarray, c0: np.ndarray, c1: np.ndarray, s0: np.ndarray, s1: np.ndarray) -> float:
        if which == "pre":
            return _metric(metric, y, c0, s0)
        if which == "post":
            return _metric(metric, y, c1, s1)
        return _metric(metric, y, c1, s1) - _metric(metric, y, c0, s0)

    return stat


def per_reader(paired: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Long table: reader x metric (sensitivity, specificity, AUROC) with pre, post, change and 95 % CIs.

    The bootstrap resamples the reader's cases (``n_boot`` times, ``seed``); before and after use
    the same resample, so the change's CI accounts for the pairing.
    """
    from cds.evaluation.metrics import bootstrap_ci

    rows = []
    label = _label(paired)
    for reader, g in paired.groupby("reader", sort=True):
        y = g["truth"].to_numpy(int)
        arrays = (y, g["present_pre"].to_numpy(bool), g["present_post"].to_numpy(bool), g["score_pre"].to_numpy(float),
                  g["score_post"].to_numpy(float))
        for m in METRICS:
            res = {k: bootstrap_ci(_paired_stat(m, k), *arrays, n_boot=n_boot, seed=seed)
                   for k in ("pre", "post", "change")}
            row: dict[str, Any] = {"data": label, "reader": reader, "metric": m, "n_cases": len(y),
                                   "n_positive": int(y.sum())}
            for k, r in res.items():
                row[k] = round(r["value"], 4)
                row[f"{k}_ci95"] = [round(float(v), 4) for v in r["ci95"]]
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v: float, ci: Sequence[float], signed: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "undefined"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(v)} ({f.format(ci[0])} to {f.format(ci[1])})"


def format_per_reader(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric of :func:`per_reader` as a reader table of "value (95 % CI)" strings."""
    if metric not in METRICS:
        raise ParameterError("metric", f"{metric!r}: use one of {', '.join(METRICS)}")
    d = long[long["metric"] == metric]
    out = pd.DataFrame({
        "data": d["data"].to_numpy(),
        "cases (positive)": [f"{n} ({p})" for n, p in zip(d["n_cases"], d["n_positive"], strict=True)],
        f"{metric} before AI": [_fmt(v, c) for v, c in zip(d["pre"], d["pre_ci95"], strict=True)],
        f"{metric} with AI": [_fmt(v, c) for v, c in zip(d["post"], d["post_ci95"], strict=True)],
        "change": [_fmt(v, c, True) for v, c in zip(d["change"], d["change_ci95"], strict=True)],
    }, index=pd.Index(d["reader"].to_numpy(), name="reader"))
    return out


def ai_right_wrong(paired: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy before vs with AI, on cases where the AI was right and where it was wrong.

    Rows: every reader, then ``all readers`` (mean over readers; the bootstrap resamples cases and
    keeps every reader's reads of a resampled case). ``moved_to_ai``: of the reads that disagreed
    with the AI before, the fraction that agreed after.
    """
    from cds.evaluation.metrics import bootstrap_ci

    label = _label(paired)
    rows = []

    def add(who: str, sub: pd.DataFrame, subset: str) -> None:
        wide_pre = sub.pivot(index="finding_id", columns="reader", values="present_pre")
        wide_post = sub.pivot(index="finding_id", columns="reader", values="present_post")
        truth = sub.groupby("finding_id")["truth"].first().reindex(wide_pre.index).to_numpy(bool)
        ai = sub.groupby("finding_id")["ai_call"].first().reindex(wide_pre.index).to_numpy(bool)
        pre_ok = (wide_pre.to_numpy(float) == truth[:, None]).astype(float)
        post_ok = (wide_post.to_numpy(float) == truth[:, None]).astype(float)
        pre_ok[wide_pre.isna().to_numpy()] = np.nan
        post_ok[wide_post.isna().to_numpy()] = np.nan
        dis = wide_pre.to_numpy(float) != ai[:, None]
        moved = dis & (wide_post.to_numpy(float) == ai[:, None])

        def change(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.nanmean(b) - np.nanmean(a)) if len(a) else float("nan")

        ci = bootstrap_ci(change, pre_ok, post_ok, n_boot=n_boot, seed=seed) if len(pre_ok) else \
            {"value": float("nan"), "ci95": [float("nan"), float("nan")]}
        rows.append({"data": label, "reader": who, "ai": subset, "n_cases": int(len(pre_ok)),
                     "accuracy_before": round(float(np.nanmean(pre_ok)), 4) if len(pre_ok) else None,
                     "accuracy_with_ai": round(float(np.nanmean(post_ok)), 4) if len(pre_ok) else None,
                     "change": round(ci["value"], 4), "change_ci95": [round(float(v), 4) for v in ci["ci95"]],
                     "moved_to_ai": round(float(moved.sum() / dis.sum()), 4) if dis.sum() else None})

    for subset, mask in (("AI right", paired["ai_correct"]), ("AI wrong", ~paired["ai_correct"])):
        sub = paired[mask]
        for reader, g in sub.groupby("reader", sort=True):
            add(reader, g, subset)
        add("all readers", sub, subset)
    return pd.DataFrame(rows)


def spread(long: pd.DataFrame, readers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Across readers, per metric: mean, SD, range of the change; readers helped / hurt (CI excludes 0);
    Spearman correlation (rho, p) of the change with the pre-AI value and (when ``readers`` has it)
    experience.
    """
    from scipy.stats import spearmanr

    rows = []
    for m in METRICS:
        d = long[long["metric"] == m].dropna(subset=["change"])
        ch = d["change"].to_numpy(float)
        lo = np.array([c[0] for c in d["change_ci95"]], float)
        hi = np.array([c[1] for c in d["change_ci95"]], float)
        row = {"data": d["data"].iloc[0] if len(d) else None, "metric": m, "readers": len(d),
               "mean_change": round(float(ch.mean()), 4) if len(ch) else None,
               "sd_change": round(float(ch.std(ddof=1)), 4) if len(ch) > 1 else None,
               "min_change": round(float(ch.min()), 4) if len(ch) else None,
               "max_change": round(float(ch.max()), 4) if len(ch) else None,
               "readers_helped": int((lo > 0).sum()), "readers_hurt": int((hi < 0).sum()),
               "rho_vs_pre_ai": None, "p_vs_pre_ai": None, "rho_vs_experience": None, "p_vs_experience": None}
        if len(d) > 2:
            r = spearmanr(d["pre"], ch)
            row["rho_vs_pre_ai"], row["p_vs_pre_ai"] = round(float(r.statistic), 3), round(float(r.pvalue), 3)
            if readers is not None and "experience_years" in readers.columns:
                exp = d["reader"].map(readers.set_index("reader")["experience_years"])
                if exp.notna().all():
                    r = spearmanr(exp, ch)
                    row["rho_vs_experience"] = round(float(r.statistic), 3)
                    row["p_vs_experience"] = round(float(r.pvalue), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_spread(long: pd.DataFrame, metric: str = "auroc", readers: pd.DataFrame | None = None,
                right_wrong: pd.DataFrame | None = None) -> Any:
    """Forest plot of each reader's change with AI (95 % CI), plus change vs experience or pre-AI value,
    plus (with ``right_wrong``) each reader's accuracy change when the AI was right vs wrong."""
    import matplotlib.pyplot as plt

    d = long[long["metric"] == metric].sort_values("change", kind="stable")
    ncols = 3 if right_wrong is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.3 * ncols, 0.35 * len(d) + 2.2))
    ax = axes[0]
    ypos = np.arange(len(d))
    lo = d["change"] - np.array([c[0] for c in d["change_ci95"]])
    hi = np.array([c[1] for c in d["change_ci95"]]) - d["change"]
    ax.errorbar(d["change"], ypos, xerr=[lo, hi], fmt="o", color="tab:blue", ecolor="0.5", capsize=2)
    ax.axvline(0, color="0.3", lw=1)
    ax.set_yticks(ypos, d["reader"])
    ax.set_xlabel(f"change in {metric} with AI")
    ax.set_title("Per reader (95 % CI)", fontsize=10)
    ax2 = axes[1]
    if readers is not None and "experience_years" in readers.columns:
        x = d["reader"].map(readers.set_index("reader")["experience_years"])
        ax2.set_xlabel("experience (years)")
    else:
        x = d["pre"]
        ax2.set_xlabel(f"{metric} before AI")
    ax2.scatter(x, d["change"], color="tab:blue")
    ax2.axhline(0, color="0.3", lw=1)
    ax2.set_ylabel(f"change in {metric}")
    ax2.set_title("Does anything predict the effect?", fontsize=10)
    if right_wrong is not None:
        ax3 = axes[2]
        rw = right_wrong[right_wrong["reader"] != "all readers"]
        for subset, color in (("AI right", "tab:green"), ("AI wrong", "tab:red")):
            s = rw[rw["ai"] == subset].set_index("reader").reindex(d["reader"])
            ax3.scatter(s["change"], ypos, color=color, label=subset)
        ax3.axvline(0, color="0.3", lw=1)
        ax3.set_yticks(ypos, d["reader"])
        ax3.set_xlabel("change in accuracy with AI")
        ax3.legend(fontsize=8)
        ax3.set_title("AI right vs AI wrong", fontsize=10)
    lab = d["data"].iloc[0] if len(d) else ""
    fig.suptitle(f"{lab}: spread of the AI effect across readers ({metric})" if lab == SIMULATED_LABEL
                 else f"Spread of the AI effect across readers ({metric}; {lab})",
                 color="darkred" if lab == SIMULATED_LABEL else "black", fontweight="bold")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- MRMC
_MRMC_SUBSETS = ("all cases", "AI right", "AI wrong")


def mrmc_auroc(paired: pd.DataFrame, cov: str = "jackknife", alpha: float = 0.05,
               by_ai: bool = True) -> dict[str, pd.DataFrame]:
    """MRMC analysis of the change in AUROC with AI (:func:`cds.studies.mrmc.mrmc_paired`), on all
    cases and (``by_ai``) on the cases where the AI was right and where it was wrong.

    One call gives the three tables, each with ``data`` (real / SIMULATED READERS) and ``cases``
    (the subset) columns:

    - ``"test"`` -- per subset and analysis (``RRRC`` random readers and cases with Hillis ddf, the
      primary analysis; ``FRRC`` fixed readers; ``RRFC`` fixed cases): reader-averaged AUROC
      without and with AI, the change (with - without) and its 95 % CI, the test statistic, df, p,
      and ``sd_effect_between_readers`` (``sqrt(2 VarTR)``: spread of the readers' true effects);
    - ``"readers"`` -- each reader's AUROC without / with AI and change with its 95 % CI and p
      (from the reader's own jackknife or DeLong variances);
    - ``"components"`` -- ``Var``, ``Cov1``-``Cov3``, ``VarR``, ``VarTR`` and the ANOVA mean squares.

    The AUROC uses the same score as :func:`per_reader` (:func:`confidence_score`). Only cases read
    by every reader enter (``cases_left_out`` counts the others). A subset the analysis cannot use
    (fewer than 2 positive or 2 negative cases) gets one row whose ``note`` says why.

    >>> cases = simulated_cases(40, seed=1)
    >>> sim = simulate_readers(cases, getfixture("tmp_path") / "s.jsonl", n_readers=3, seed=1)
    >>> t = mrmc_auroc(paired_reads(load_reads(sim.store_path), load_truth(sim.truth_path)))
    >>> t["test"].query("analysis == 'RRRC'")[["data", "cases", "n_readers"]].values.tolist()[0]
    ['SIMULATED READERS', 'all cases', 3]
    """
    from cds.studies import mrmc

    if cov not in mrmc.COV_METHODS:
        raise ParameterError("cov", f"{cov!r}: use one of {', '.join(mrmc.COV_METHODS)}")
    label = _label(paired)
    without, with_ai = mrmc.PAIRED_MODALITIES
    subsets: list[tuple[str, pd.DataFrame]] = [("all cases", paired)]
    if by_ai:
        right = paired.groupby("finding_id")["ai_correct"].first()
        subsets += [("AI right", paired[paired["finding_id"].map(right).astype(bool)]),
                    ("AI wrong", paired[~paired["finding_id"].map(right).astype(bool)])]
    tests, readers_rows, comps = [], [], []
    for name, sub in subsets:
        head = {"data": label, "cases": name}
        try:
            res = mrmc.mrmc_paired(sub, cov=cov, alpha=alpha)
        except ParameterError as e:
            tests.append({**head, "n_readers": int(sub["reader"].nunique()), "n_cases": int(sub["finding_id"].nunique()),
                          "note": f"not analysed: {e.reason}"})
            continue
        means = res.auc.mean(axis=0)
        size = {"n_readers": res.n_readers, "n_cases": res.n_cases, "n_positive": res.n_positive,
                "cases_left_out": res.left_out.get("cases_not_fully_crossed", 0)}
        for row in res.test().itertuples(index=False):
            tests.append({**head, **size, "analysis": row.analysis, "cov": cov,
                          "auroc_without_ai": round(float(means[without]), 4),
                          "auroc_with_ai": round(float(means[with_ai]), 4),
                          "change": round(row.estimate, 4),
                          "change_ci95": [round(float(row.ci_lower), 4), round(float(row.ci_upper), 4)],
                          "std_err": round(row.std_err, 5), "statistic_name": row.statistic_name,
                          "statistic": round(row.statistic, 4), "ndf": row.ndf, "ddf": round(row.ddf, 2),
                          "p_value": round(row.p_value, 4),
                          "sd_effect_between_readers": round(res.sd_effect_between_readers, 4), "note": row.note})
        for row in res.readers_table().itertuples(index=False):
            readers_rows.append({**head, "reader": row.reader, "auroc_without_ai": round(float(row[2]), 4),
                                 "auroc_with_ai": round(float(row[3]), 4), "change": round(row.change, 4),
                                 "change_ci95": [round(float(row.ci_lower), 4), round(float(row.ci_upper), 4)],
                                 "p_value": round(row.p_value, 4)})
        for row in res.variance_components().itertuples(index=False):
            comps.append({**head, "component": row.component, "estimate": float(f"{row.estimate:.6g}"),
                          "correlation": round(row.correlation, 4)})
    return {"test": pd.DataFrame(tests), "readers": pd.DataFrame(readers_rows), "components": pd.DataFrame(comps)}


def format_mrmc(tables: dict[str, pd.DataFrame], analysis: str = "RRRC") -> pd.DataFrame:
    """One line per case subset of :func:`mrmc_auroc`'s ``"test"`` table for one analysis, as strings.

    >>> t = {"test": pd.DataFrame([{"data": "real reads", "cases": "all cases", "analysis": "RRRC",
    ...      "n_readers": 5, "n_cases": 114, "auroc_without_ai": 0.897, "auroc_with_ai": 0.9408,
    ...      "change": 0.0438, "change_ci95": [-0.0004, 0.088], "statistic_name": "F", "statistic": 4.4563,
    ...      "ndf": 1, "ddf": 15.26, "p_value": 0.0517, "sd_effect_between_readers": 0.02, "note": ""}])}
    >>> format_mrmc(t).iloc[0]["change in AUROC (95 % CI)"]
    '+0.044 (-0.000 to +0.088)'
    """
    if analysis not in ("RRRC", "FRRC", "RRFC"):
        raise ParameterError("analysis", f"{analysis!r}: use RRRC, FRRC or RRFC")
    t = tables["test"]
    rows = []
    for cases in _MRMC_SUBSETS:
        d = t[t["cases"] == cases]
        if d.empty:
            continue
        r = d[d["analysis"] == analysis].iloc[0] if "analysis" in d and (d["analysis"] == analysis).any() else d.iloc[0]
        if "analysis" not in r or pd.isna(r.get("analysis")):
            rows.append({"data": r["data"], "cases": cases, "readers x cases": f"{r['n_readers']} x {r['n_cases']}",
                         "note": r["note"]})
            continue
        stat = (f"{r['statistic_name']}({r['ndf']:g}, {r['ddf']:.2f}) = {r['statistic']:.3f}"
                if np.isfinite(r["ddf"]) else f"{r['statistic_name']}({r['ndf']:g}) = {r['statistic']:.3f}")
        rows.append({"data": r["data"], "cases": cases, "readers x cases": f"{r['n_readers']} x {r['n_cases']}",
                     "AUROC without AI": f"{r['auroc_without_ai']:.3f}", "AUROC with AI": f"{r['auroc_with_ai']:.3f}",
                     "change in AUROC (95 % CI)": _fmt(r["change"], r["change_ci95"], True),
                     "test": stat, "p": _fmt_p(r["p_value"]),
                     "SD of effect between readers": f"{r['sd_effect_between_readers']:.3f}", "note": r["note"]})
    return pd.DataFrame(rows).set_index("cases").fillna("")


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "undefined"
    return "<0.0001" if p < 0.0001 else f"{p:.4f}"
