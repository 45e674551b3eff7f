"""Uplift of a recommendation: tau(u,i) = E[Y(1) - Y(0) | u,i] from logs with treatment
T (recommended = exposed), outcome Y and the logging policy's propensity e = P(T=1 | u,i).

Learners (each fit on all logged rows, treated and untreated, on the shared factor backbone):
  t_learner   mu1 on treated rows, mu0 on untreated rows (each IPS-weighted to the population);
              tau = mu1 - mu0
  x_learner   Kuenzel et al. 2019: imputed effects D1 = Y - mu0 (treated), D0 = mu1 - Y
              (untreated), regressed by tau1 / tau0; tau = e tau0 + (1 - e) tau1
  dr_learner  Kennedy 2020: regress the doubly robust pseudo-outcome
              mu1 - mu0 + T (Y - mu1) / e - (1 - T) (Y - mu0) / (1 - e)
  dlce        unbiased learning of the causal effect by label transformation (Sato et al. 2020):
              label L = 1 for (T=1, Y=1) and (T=0, Y=0), else 0, IPS-weighted by 1/e (treated)
              or 1/(1-e) (untreated); then P(L=1) = (1 + tau) / 2 and tau = 2 sigma(f) - 1
  shared      ours: one relevance model r = sigma(f(u,i)) (two-tower) and an organic share
              s = sigma(h(u,i)) (biases + feature towers, no interaction), fit jointly:
              P(Y=1 | T=1) = r,  P(Y=1 | T=0) = r s;  tau = r (1 - s) >= 0. A recommendation
              matters when the user would like the item and would not have found it anyway. Both
              arms inform r, so the untreated majority of the log is not wasted on a separate mu0.
  shared_shift the same backbone with an organic shift of the odds, with its own user x item
              factors: P(Y=1 | T=0) = sigma(f + h);  tau = r - sigma(f + h). Users differ in what
              they find themselves (h depends on the pair), and tau < 0 where h > 0 (a
              recommendation that backfires). The share form is the stronger prior where not
              recommending only loses sales and the log is small; the shift form can say that a
              recommendation hurts, and for whom. `auto` chooses by the criterion below.
              With exposure_weight > 0 an exposure head shares r's user/item factors:
              logit P(T=1 | u,i) = alpha <p_u, q_i> + c_u + c_i, trained on the propensities
              (cross-entropy with the propensity as soft label). The logging policy chose what
              to show from what it knew of the user, so its choices carry preference signal on
              every logged row, outcome or not (the shared-representation idea of ESCM2, Wang
              et al. 2022); alpha is learned, so a policy that ignores preferences costs little.
Exposure features (exposure_features=True, every learner): each item's and each user's mean
logit propensity over the log, standardised, appended to the feature towers. An item's exposure
rate is its observable popularity with the logging policy; popularity drives how often it is
found without a recommendation, so mu0 and the organic share need it (propensity as a
covariate also guards against regularisation-induced confounding, Hahn et al. 2020).
Chosen by the target. What ranks by uplift is chosen on held-out logged rows by an uplift criterion,
declared here before any fit: the tau-risk of Nie & Wager (2021), the R-loss
    mean over held-out rows of [(Y - m(x)) - (T - e) (a + b tau(x))]^2, at the best a and b >= 0,
with e the logged propensity (exact: the log records the policy's own) and m a fixed baseline, each
user's mean outcome on the training rows shrunk to the global mean (`outcome_baseline`). With e exact,
the R-loss's expectation is a constant plus mean e(1 - e) (tau(x) - tau*(x))^2 whatever m is (m only
adds variance); the affine map a + b tau, fitted on the same rows (two parameters for every
candidate alike), makes it judge the shape of tau, not its scale: a ranking needs the order. Lower
means closer to the true effect where the log has both arms. Outcome loss rewards predicting what
users do anyway; this rewards the effect. It sets the shared learners' exposure weight ("auto") and
`learner: auto`: every learner is fitted on the same split, then stacked by the same loss (Nie & Wager's
R-stacking): the held-out R-loss of a + sum_k b_k tau_k is minimised over a and b_k >= 0, and the served
effect is the convex combination sum_k w_k tau_k, w = b / sum(b) (the learners with w > 0 only; a
ranking is unchanged by the scale and the effect stays on the learners' own scale). Measured on the
simulator's worlds, the tau-risk of two learners often differs by less than its noise while their
rankings of unlogged pairs differ (the shares learner and the shift learner where the organic share
depends on the pair): the stack keeps both in the proportion the held-out rows support, where picking
one bets everything on a noisy difference. When no learner's effect carries signal (all b = 0), the
single learner with the lowest tau-risk is kept. Early stopping watches the outcome loss
of the validation rows (and the T/X/DR outcome models their own): measured, the tau-risk cannot time
it on small logs (6,000 rows, 600 held out: epochs differ by 1e-4 against noise of 1e-3, and stopping
by it kept an epoch-1 model whose uplift ranked matches at AUC 0.50 where the outcome-stopped one
reaches 0.9); the criterion then chooses among the early-stopped candidates.
Uncertainty: `n_bootstrap` members fit on bootstrap resamples of the training rows (one held-out
validation split, shared by all members, decides early stopping and "auto"); `predict_interval`
returns the mean and a percentile interval per pair.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from causalrec.causal.debias import DebiasedRecommender, auto_exposure_weight
from causalrec.causal.privacy import composed
from causalrec.causal.training import FitSettings, OnePassPath, minibatches


def outcome_baseline(users: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, shrink: float = 5.0) -> np.ndarray:
    """m(x) of the tau-risk for every row: its user's mean outcome on the fit rows, shrunk towards the
    global mean by `shrink` pseudo-rows (a user without fit rows gets the global mean)."""
    users, y = np.asarray(users), np.asarray(y, np.float64)
    g = float(y[fit_rows].mean())
    stats = pd.DataFrame({"u": users[fit_rows], "y": y[fit_rows]}).groupby("u")["y"].agg(["sum", "count"])
    per_user = (stats["sum"] + shrink * g) / (stats["count"] + shrink)
    return per_user.reindex(users).fillna(g).to_numpy()


def logged_treatment_propensity(interactions: pd.DataFrame, propensity: np.ndarray) -> np.ndarray:
    """(rows,) P(T = 1 | user, item, the row is in the log): what every uplift learner needs as e.

    The base log records every candidate the logging policy considered, shown or not, so there it is
    the policy's propensity. Served traffic records every shown item but only a uniform sample of the
    unshown ones (the /recommend controls, drawn at rate c, the request's `control_rate`): a pair
    reaches the log treated with probability e and untreated with (1 - e) c, so among logged rows
    P(T = 1) = e / (e + (1 - e) c). A served request whose client reported no controls has c = 0: its
    rows are treated for sure and carry no contrast (the learner's clip bounds them)."""
    e = np.asarray(propensity, np.float64)
    if "control_rate" not in interactions or "request_id" not in interactions:
        return e
    served = interactions["request_id"].fillna("").astype(str).ne("").to_numpy()
    if not served.any():
        return e
    from causalrec.data.feedback import request_control_rate

    c = np.where(served, request_control_rate(interactions), 1.0)
    return e / (e + (1 - e) * c)


def tau_risk(tau: np.ndarray, t: np.ndarray, y: np.ndarray, e: np.ndarray, m: np.ndarray) -> float:
    """The R-loss of predicted effects `tau` on held-out rows after the best increasing affine map a + b tau (b >= 0)
    (module docstring); lower is better."""
    tau, t, y, e, m = (np.asarray(a, np.float64) for a in (tau, t, y, e, m))
    x = np.column_stack([t - e, (t - e) * (tau - tau.mean())])
    coef = np.linalg.lstsq(x, y - m, rcond=None)[0]
    if coef[1] < 0:  # b >= 0: an order the effects run against is no order (else a reversed ranking scores as well)
        coef = np.array([np.linalg.lstsq(x[:, :1], y - m, rcond=None)[0][0], 0.0])
    return float(np.mean((y - m - x @ coef) ** 2))


class UpliftMember:
    """One fitted uplift model: relevance-type parts (DebiasedRecommender each) and how their score
    matrices combine into tau. Serving reads `parts` and `combine` (causalrec.serving.scoring), so
    training and serving share one definition of each learner."""

    name = ""

    def __init__(self, parts: list[DebiasedRecommender], **extra):
        self.parts, self.extra = parts, extra

    def combine(self, s: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def outcome_parts(self) -> list[int]:
        """The parts that model the outcome of a shown item, E[Y(1) | u, i] (serving updates their user side
        online from served feedback); the other parts model Y(0) or the effect itself and stay as trained."""
        return []

    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        # The effect on a 0/1 outcome lies in [-1, 1]; regression learners can overshoot it.
        return np.clip(self.combine([p.score_matrix(user_ids, item_ids) for p in self.parts]), -1.0, 1.0)

    def predict(self, user_ids, item_ids) -> np.ndarray:
        """Uplift of each (user, item) pair."""
        return np.clip(self.combine([p.predict(user_ids, item_ids) for p in self.parts]), -1.0, 1.0)

    def to_state(self) -> dict:
        return {"learner": self.name, "parts": [p.to_state() for p in self.parts], "extra": self.extra}


class TLearner(UpliftMember):
    name = "t_learner"

    def combine(self, s):
        return s[0] - s[1]

    def outcome_parts(self):
        return [0]  # mu1

    @classmethod
    def fit(cls, arms: "_Arms") -> "TLearner":
        return cls(arms.outcome_models())


class XLearner(UpliftMember):
    name = "x_learner"

    def combine(self, s):
        g = self.extra["treated_share"]
        return g * s[1] + (1 - g) * s[0]

    @classmethod
    def fit(cls, arms: "_Arms") -> "XLearner":
        mu1, mu0 = arms.outcome_models()
        m1, m0, y, treated = mu1.predict(arms.users, arms.items), mu0.predict(arms.users, arms.items), arms.y, arms.treated
        tau1 = arms.fit_model(treated, (y - m0).astype(np.float32), objective="regression", s=3)
        tau0 = arms.fit_model(~treated, (m1 - y).astype(np.float32), objective="regression", s=4)
        return cls([tau1, tau0], treated_share=float(arms.e.mean()))


class DRLearner(UpliftMember):
    name = "dr_learner"

    def combine(self, s):
        return s[0]

    @classmethod
    def fit(cls, arms: "_Arms") -> "DRLearner":
        mu1, mu0 = arms.outcome_models()
        m1, m0, y, t, e = mu1.predict(arms.users, arms.items), mu0.predict(arms.users, arms.items), arms.y, arms.treated, arms.e
        pseudo = m1 - m0 + t * (y - m1) / e - (~t) * (y - m0) / (1 - e)
        return cls([arms.fit_model(np.ones_like(t), pseudo.astype(np.float32), objective="regression", s=5)])


class DLCE(UpliftMember):
    name = "dlce"

    def combine(self, s):
        return 2 * s[0] - 1

    @classmethod
    def fit(cls, arms: "_Arms") -> "DLCE":
        label = np.where(arms.treated, arms.y, 1 - arms.y).astype(np.float32)
        prop = np.where(arms.treated, arms.e, 1 - arms.e)
        return cls([arms.fit_model(np.ones_like(arms.treated), label, prop, method="ips")])


class Shared(UpliftMember):
    name, form = "shared", "share"

    def outcome_parts(self):
        return [0]  # r, the outcome if shown; s[1] is the organic share (or shift)

    def combine(self, s):
        if self.extra.get("form", "share") == "share":
            return s[0] * (1 - s[1])
        r = np.clip(s[0], 1e-6, 1 - 1e-6)  # the shift form: s[1] is the organic logit shift h
        return r - 1 / (1 + np.exp(-(np.log(r / (1 - r)) + s[1])))

    @classmethod
    def fit(cls, arms: "_Arms") -> "Shared":
        sh = SharedUplift(**arms.learner.fit_settings(seed=arms.seed), form=cls.form,
                          exposure_weight=0.0 if arms.exposure_weight == "auto" else float(arms.exposure_weight))
        args = (arms.users, arms.items, arms.treated.astype(int), arms.y, arms.e, arms.val, arms.features)
        search = None
        if arms.exposure_weight == "auto":  # the weight with the lowest validation tau-risk
            sh = auto_exposure_weight(sh, criterion="tau_risk_").fit(*args).best_estimator_
            search = sh.search_["tau_risk_"]
        else:
            sh.fit(*args)
        return cls(sh.as_recommenders(), exposure_weight=float(sh.exposure_weight_), form=cls.form,
                   alpha=float(sh.modules_["exposure"].alpha.detach()), validation_tau_risk=search)


class SharedShift(Shared):
    name, form = "shared_shift", "shift"


LEARNERS = {c.name: c for c in (TLearner, XLearner, DRLearner, DLCE, Shared, SharedShift)}
# the learners made of private fits, and the arm each of their fits trains on (in order): their privacy plan
PRIVATE_FITS = {"t_learner": ("treated", "untreated"), "x_learner": ("treated", "untreated", "treated", "untreated"),
                "dr_learner": ("treated", "untreated", "all"), "dlce": ("all",)}
PRIVATE_LEARNERS = tuple(PRIVATE_FITS)


class Stacked(UpliftMember):
    """`auto`'s R-stack: a convex combination of fitted learners' effects, sum_k w_k tau_k (module docstring).
    Its parts are the components' parts in order, so serving scores them like any member's."""

    name = "stacked"

    def __init__(self, parts: list[DebiasedRecommender], weights: list[float], components: list[dict], **extra):
        super().__init__(parts, weights=weights, components=components, **extra)
        self.members, start = [], 0
        for c in components:  # {"learner", "n_parts", "extra"}: each component as its own member
            self.members.append(LEARNERS[c["learner"]](parts[start:start + c["n_parts"]], **c["extra"]))
            start += c["n_parts"]

    @classmethod
    def of(cls, members: list[UpliftMember], weights) -> "Stacked":
        return cls([p for m in members for p in m.parts], [float(w) for w in weights],
                   [{"learner": m.name, "n_parts": len(m.parts), "extra": m.extra} for m in members])

    def outcome_parts(self):
        out, start = [], 0
        for m in self.members:
            out += [start + j for j in m.outcome_parts()]
            start += len(m.parts)
        return out

    def combine(self, s):
        out, start = 0.0, 0
        for w, m in zip(self.extra["weights"], self.members):
            out = out + w * np.clip(m.combine(s[start:start + len(m.parts)]), -1.0, 1.0)
            start += len(m.parts)
        return out


def stack_weights(taus: np.ndarray, t: np.ndarray, y: np.ndarray, e: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(candidates,) convex weights of the R-stack: the held-out R-loss of a + sum_k b_k tau_k minimised over
    a free and b >= 0 (non-negative least squares), w = b / sum(b); all zeros when every b is 0."""
    from scipy.optimize import nnls

    taus, t, y, e, m = (np.asarray(a, np.float64) for a in (taus, t, y, e, m))
    r = t - e
    x = np.column_stack([r, -r, r[:, None] * (taus - taus.mean(0))])  # a = a+ - a-: free sign
    b = nnls(x, y - m)[0][2:]
    return b / b.sum() if b.sum() > 0 else b


@dataclass
class _Arms:
    """The data of one bootstrap member and how to fit an outcome-type model on part of it."""

    learner: "UpliftLearner"
    users: np.ndarray
    items: np.ndarray
    treated: np.ndarray
    y: np.ndarray
    e: np.ndarray
    val: np.ndarray          # True: the row only validates (early stopping, auto)
    seed: int
    features: dict
    exposure_weight: float | str

    def fit_model(self, mask, target, prop=None, objective="binary", method="naive", s=0) -> DebiasedRecommender:
        m = DebiasedRecommender(method, objective=objective, privacy=self.learner.private_fit_,
                                **self.learner.fit_settings(seed=self.seed + s))
        fit, vm = ~self.val & mask, self.val & mask
        return m.fit(self.users[fit], self.items[fit], target[fit], None if prop is None else prop[fit],
                     val=(self.users[vm], self.items[vm], target[vm], None if prop is None else prop[vm]),
                     **self.features)

    def outcome_models(self) -> list[DebiasedRecommender]:
        """mu1 on treated rows, mu0 on untreated rows (weighted to the population with arm_method ips)."""
        method = self.learner.arm_method
        return [self.fit_model(self.treated, self.y, self.e, method=method, s=1),
                self.fit_model(~self.treated, self.y, 1 - self.e, method=method, s=2)]


@dataclass
class UpliftLearner(FitSettings):
    learner: str = "dr_learner"   # one of LEARNERS, or "auto": the best by the uplift criterion on validation
    n_bootstrap: int = 1
    arm_method: str = "ips"       # weighting of the outcome models mu1/mu0: "ips" (to the population) or "naive"
    clip: float = 0.01
    exposure_features: bool = True
    exposure_weight: float | str = "auto"  # shared learner: exposure-head weight, >= 0, or "auto" (validation)
    privacy: dict | None = None   # user-level DP for every fit (causalrec.causal.privacy.UserLevelDP's fields); None: off
    members_: list = field(default_factory=list, init=False, repr=False)
    private_fit_: dict | None = field(default=None, init=False, repr=False)

    def fit(self, users, items, treatment, outcome, propensity, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None) -> "UpliftLearner":
        if self.learner not in (*LEARNERS, "auto"):
            raise ValueError(f"unknown uplift learner {self.learner!r}; choose from {(*LEARNERS, 'auto')}")
        if not (self.exposure_weight == "auto" or (isinstance(self.exposure_weight, (int, float))
                                                   and self.exposure_weight >= 0)):
            raise ValueError(f"exposure_weight must be a number >= 0 or 'auto', got {self.exposure_weight!r}")
        users, items = np.asarray(users).astype(str), np.asarray(items).astype(str)
        t = np.asarray(treatment).astype(int)
        y = np.asarray(outcome, dtype=np.float32)
        e = np.clip(np.asarray(propensity, dtype=np.float64), self.clip, 1 - self.clip)
        if not ((t == 0) | (t == 1)).all():
            raise ValueError("treatment must be 0/1")
        if t.min() == t.max():
            raise ValueError("uplift needs both treated and untreated rows")
        features = {k: v for k, v in (("user_features", user_features), ("item_features", item_features)) if v is not None}
        if self.exposure_features:
            features = with_exposure_features(users, items, e, features)
        rng = np.random.default_rng(self.seed)
        # One validation split for every member, outside the bootstrap: a resample holds copies of
        # its own rows, so validating on them would reward memorising (and bias "auto" upwards).
        is_val = rng.random(len(y)) < 0.1
        train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        resamples = [train_rows if self.n_bootstrap == 1 else rng.choice(train_rows, size=len(train_rows))
                     for _ in range(self.n_bootstrap)]
        self.private_fit_ = None if self.privacy is None else self._private_fit(users, t, resamples)
        val = np.r_[np.zeros(len(train_rows), bool), np.ones(len(val_rows), bool)]
        self.members_ = []
        exposure_weight, learner = self.exposure_weight, self.learner
        baseline = outcome_baseline(users, y, ~is_val)[val_rows]
        score = lambda m: tau_risk(m.predict(users[val_rows], items[val_rows]), t[val_rows],  # noqa: E731
                                   y[val_rows], e[val_rows], baseline)
        self.search_ = self.stack_ = None
        for b, rows in enumerate(resamples):
            idx = np.concatenate([rows, val_rows])
            arms = _Arms(self, users[idx], items[idx], t[idx] == 1, y[idx], e[idx], val, self.seed + 10 * b, features,
                         exposure_weight)
            if learner == "auto":  # every learner on the first member's rows, stacked by the criterion
                fitted = {name: cls.fit(arms) for name, cls in LEARNERS.items()}
                self.search_ = {name: score(m) for name, m in fitted.items()}  # validation tau-risk
                taus = np.column_stack([m.predict(users[val_rows], items[val_rows]) for m in fitted.values()])
                w = stack_weights(taus, t[val_rows], y[val_rows], e[val_rows], baseline)
                self.stack_ = {name: float(v) for name, v in zip(fitted, w) if v > 0}
                if len(self.stack_) > 1:
                    learner = "stacked"
                    self.members_.append(Stacked.of([fitted[n] for n in self.stack_], list(self.stack_.values())))
                else:  # one learner carries the signal, or none does: the lowest tau-risk (first of equals)
                    learner = next(iter(self.stack_), None) or min(self.search_, key=self.search_.get)
                    self.members_.append(fitted[learner])
            elif learner == "stacked":  # a later bootstrap member: the same components and weights
                first = self.members_[0]
                parts = [LEARNERS[c.name].fit(dataclasses.replace(arms, exposure_weight=c.extra.get(
                    "exposure_weight", exposure_weight))) for c in first.members]
                self.members_.append(Stacked.of(parts, first.extra["weights"]))
            else:
                self.members_.append(LEARNERS[learner].fit(arms))
            exposure_weight = self.members_[0].extra.get("exposure_weight", exposure_weight)  # "auto": decided once
        self.learner_ = learner
        if self.privacy is not None:
            self.privacy_ = composed([p.privacy_ for m in self.members_ for p in m.parts])
        self.validation_tau_risk_ = score(self.members_[0])  # a stack's is in-sample: its weights were fit on these rows
        return self

    def _private_fit(self, users: np.ndarray, t: np.ndarray, resamples: list[np.ndarray]) -> dict:
        """The privacy settings every part is fitted with: one noise multiplier, calibrated so that every
        private fit of every member, composed, spends at most privacy.epsilon (the fits are planned
        from the rows each will see: its arm of its resample)."""
        from causalrec.causal.privacy import UserLevelDP, calibrate

        if self.learner not in PRIVATE_LEARNERS:
            raise ValueError(f"uplift learner {self.learner!r} has no private fit; choose from {PRIVATE_LEARNERS} "
                             "(auto chooses on private validation rows; the shared learners' loss couples users)")
        if self.exposure_features:
            raise ValueError("a private uplift fit takes no exposure features: they are statistics over every user's "
                             "rows, so one person would move every user's inputs (exposure_features=False)")
        dp = UserLevelDP(**self.privacy)
        if dp.noise_multiplier is not None:
            return self.privacy
        mechanisms = []
        for rows in resamples:
            treated = t[rows] == 1
            arms = {"treated": len(np.unique(users[rows][treated])), "untreated": len(np.unique(users[rows][~treated])),
                    "all": len(np.unique(users[rows]))}
            for arm in PRIVATE_FITS[self.learner]:
                mechanisms += dp.mechanisms(arms[arm], self.epochs)
        return {**self.privacy, "noise_multiplier": calibrate(dp.epsilon, dp.delta, mechanisms)}

    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        """(users, items) estimated uplift (mean over bootstrap members)."""
        return np.mean([m.score_matrix(user_ids, item_ids) for m in self.members_], 0)

    def predict_interval(self, user_ids, item_ids, alpha: float = 0.1) -> dict:
        """Per (user, item) pair: mean uplift and a (1 - alpha) bootstrap interval (needs n_bootstrap > 1)."""
        users, u_pos = np.unique(np.asarray(user_ids).astype(str), return_inverse=True)
        items, i_pos = np.unique(np.asarray(item_ids).astype(str), return_inverse=True)
        draws = np.stack([m.score_matrix(users, items)[u_pos, i_pos] for m in self.members_])
        return {"mean": draws.mean(0), "lower": np.quantile(draws, alpha / 2, 0), "upper": np.quantile(draws, 1 - alpha / 2, 0)}

    def to_state(self) -> dict:
        from dataclasses import asdict

        return {"params": {k: v for k, v in asdict(self).items() if k not in ("members_", "private_fit_")},
                "members": [m.to_state() for m in self.members_],
                "chosen": {"learner": getattr(self, "learner_", self.learner), "search": getattr(self, "search_", None),
                           "stack": getattr(self, "stack_", None),
                           "validation_tau_risk": getattr(self, "validation_tau_risk_", None),
                           "privacy": getattr(self, "privacy_", None)}}

    @classmethod
    def from_state(cls, state: dict) -> "UpliftLearner":
        model = cls(**state["params"])
        chosen = state.get("chosen") or {}  # absent in models saved before `auto`
        model.learner_ = chosen.get("learner", model.learner)
        model.search_, model.validation_tau_risk_ = chosen.get("search"), chosen.get("validation_tau_risk")
        model.stack_ = chosen.get("stack")
        if chosen.get("privacy") is not None:
            model.privacy_ = chosen["privacy"]
        model.members_ = [{**LEARNERS, "stacked": Stacked}[m["learner"]]([DebiasedRecommender.from_state(p) for p in m["parts"]], **m["extra"])
                          for m in state["members"]]
        return model


def with_exposure_features(users: np.ndarray, items: np.ndarray, propensity: np.ndarray, features: dict) -> dict:
    """Append each user's and each item's mean logit propensity (standardised) to their feature frames.
    Ids without features get zeros for the other columns; a new item at serving time gets 0 (the
    catalogue mean) for its exposure column (FactorTerm.add_item pads)."""
    logit = np.log(propensity / (1 - propensity))
    out = {}
    for key, ids in (("user_features", users), ("item_features", items)):
        stat = pd.Series(logit).groupby(ids).mean()
        stat = (stat - stat.mean()) / (stat.std() if stat.std() > 0 else 1.0)
        base = features.get(key)
        if base is None:
            frame = pd.DataFrame({"exposure_logit": stat})
        else:
            base = base.copy()
            base.index = base.index.astype(str)
            all_ids = base.index.union(stat.index)
            frame = base.reindex(all_ids).fillna(0.0)
            frame.columns = [f"f{j}" for j in range(frame.shape[1])]
            frame["exposure_logit"] = stat.reindex(all_ids).fillna(0.0)
        out[key] = frame.astype(np.float32)
    return out


@dataclass
class SharedUplift(OnePassPath, FitSettings):
    """The 'shared' learner's joint fit: relevance x (1 - organic share), fit on both arms, with an
    optional exposure head on the relevance factors (see the module docstring). `as_recommenders`
    hands the fitted relevance and organic models to `Shared` (for scoring and persistence)."""

    exposure_weight: float = 0.0
    form: str = "share"  # P(Y=1 | T=0) = r s ("share") or sigma(f + h) ("shift"): the module docstring
    history: list = field(default_factory=list, init=False)

    def fit(self, users, items, t, y, e, val_mask, features: dict) -> "SharedUplift":
        """Early stopping on the outcome loss of the validation rows (`val_mask`); their tau-risk of the
        kept state in `tau_risk_` (what chooses among candidates: the module docstring)."""
        self._fit_candidates([self], users, items, t, y, e, val_mask, features)
        return self

    def _fit_candidates(self, candidates: list["SharedUplift"], users, items, t, y, e, val_mask, features: dict):
        import torch
        import torch.nn.functional as F

        from causalrec.causal.debias import feature_matrix
        from causalrec.causal.training import Stacked, adam, copy_decay, train_loop
        from causalrec.models.factor import FactorModel
        from causalrec.models.ids import IdIndex

        for c in candidates:
            if not (isinstance(c.exposure_weight, (int, float)) and c.exposure_weight >= 0):
                raise ValueError(f"exposure_weight must be a number >= 0 or 'auto', got {c.exposure_weight!r}")
        weights = torch.tensor([float(c.exposure_weight) for c in candidates])
        uf, itf = features.get("user_features"), features.get("item_features")
        user_index = IdIndex([*users, *([] if uf is None else uf.index.astype(str))])
        item_index = IdIndex([*items, *([] if itf is None else itf.index.astype(str))])
        X, Z = feature_matrix(user_index, uf), feature_matrix(item_index, itf)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        net = lambda dim: FactorModel(len(user_index), len(item_index), dim, X, Z)  # noqa: E731
        # Exposure head: its own biases and feature terms, plus alpha x the relevance interaction.
        # the share form's organic part has no user x item factors: with them it can explain the untreated
        # rows' preferences itself, and the relevance stops learning from that arm (the product's prior on
        # small logs: the gate test's trained policy lost its edge); the shift form needs them
        plain = {"relevance": net(self.dim), "organic": net(self.dim if self.form == "shift" else 0), "exposure": net(0)}
        plain["exposure"].register_parameter("alpha", torch.nn.Parameter(torch.ones(1)))
        modules = {k: Stacked(m, len(candidates)) for k, m in plain.items()}
        relevance, organic, exposure = modules.values()
        with_head = bool((weights > 0).any())
        opt = adam([p for k, m in modules.items() if k != "exposure" or with_head for p in m.parameters()],
                   self.lr, copy_decay(candidates))
        u, i = torch.as_tensor(user_index.encode(users)), torch.as_tensor(item_index.encode(items))
        tt, yt = torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        et = torch.as_tensor(e, dtype=torch.float32)

        def arms(ub, ib):
            """(P(Y=1 | T=1), P(Y=1 | T=0), the relevance interaction), one row per candidate."""
            interaction, bias = relevance.score_terms(ub, ib)
            logit1 = interaction + bias
            if self.form == "shift":
                return torch.sigmoid(logit1), torch.sigmoid(logit1 + organic(ub, ib)), interaction
            r = torch.sigmoid(logit1)
            return r, r * torch.sigmoid(organic(ub, ib)), interaction

        def losses(ub, ib, tb, yb, eb):
            # one row per candidate: (outcome loss, training loss)
            p1, p0, interaction = arms(ub, ib)
            p = torch.where(tb == 1, p1, p0).clamp(1e-6, 1 - 1e-6)
            outcome_nll = F.binary_cross_entropy(p, yb.expand_as(p), reduction="none").mean(-1)
            if not with_head:
                return outcome_nll, outcome_nll
            exposure_logit = exposure.alpha * interaction + exposure(ub, ib)
            exposure_nll = F.binary_cross_entropy_with_logits(exposure_logit, eb.expand_as(exposure_logit),
                                                              reduction="none").mean(-1)
            return outcome_nll, outcome_nll + weights * exposure_nll

        def step(batch):
            loss = losses(*batch)[1]
            opt.zero_grad()
            loss.sum().backward()  # the candidates share no weights: each gets its own loss's gradient
            opt.step()
            return loss.detach().numpy(), len(batch[0])

        columns = (u, i, tt, yt, et)
        fit_idx, val_idx = torch.as_tensor(np.flatnonzero(~val_mask)), torch.as_tensor(np.flatnonzero(val_mask))
        fit_rows, val_rows = ([c.index_select(0, idx) for c in columns] for idx in (fit_idx, val_idx))
        histories = train_loop(step, minibatches(self.batch_size, rng, *fit_rows), self.epochs, modules,
                               lambda: losses(*val_rows)[0], self.patience, copies=len(candidates))
        baseline = outcome_baseline(users, y, ~val_mask)[val_mask]
        with torch.no_grad():
            p1, p0, _ = arms(val_rows[0], val_rows[1])
        t_, y_, e_ = (c.numpy() for c in val_rows[2:])
        risks = [tau_risk(row, t_, y_, e_, baseline) for row in (p1 - p0).numpy()]
        for j, c in enumerate(candidates):
            c.users_, c.items_, c.history, c.tau_risk_ = user_index, item_index, histories[j], risks[j]
            c.exposure_weight_ = float(c.exposure_weight)
            c.modules_ = {k: m.unstack(j) for k, m in modules.items()}
            if c.exposure_weight_ == 0:  # its head never trained (only decayed beside the others): as initialised
                c.modules_["exposure"] = copy.deepcopy(plain["exposure"]).eval()

    def as_recommenders(self) -> list[DebiasedRecommender]:
        """Relevance r and organic share s as relevance-type models over the same ids."""
        out = []
        for key in ("relevance", "organic"):  # an organic shift h is a logit: scored with the identity link
            shift = key == "organic" and self.form == "shift"
            m = DebiasedRecommender("naive", dim=self.modules_[key].user.embedding_dim, seed=self.seed,
                                    objective="regression" if shift else "binary")
            m.users_, m.items_, m.net_ = self.users_, self.items_, self.modules_[key]
            m.trained_users_, m.trained_items_ = np.ones(len(self.users_), bool), np.ones(len(self.items_), bool)
            m.history = self.history if key == "relevance" else []
            out.append(m)
        return out
