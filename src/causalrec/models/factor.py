"""The shared backbone: a factor model over ids, optionally with feature towers.

score(u, i) = <p_u, q_i> + b_u + b_i + b, where
  p_u = P[u] + A x_u      (user id embedding + linear map of user features, e.g. attributes, profile text)
  q_i = Q[i] + B z_i      (item id embedding + linear map of item features, e.g. attributes, text embedding)
  b_u = c_u + a' x_u,  b_i = d_i + b' z_i.
With no features it is matrix factorisation with biases; with features it is a two-tower model
that scores a new (cold) item from its text alone (its id parts are zero).
"""
from __future__ import annotations

import torch
from torch import nn


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[..., idx, :] for x of shape (n, d) or (copies, n, d). One index_select on the first axis of
    the flattened copies: its backward (index_add on dim 0) is several times faster on CPU than one
    on a middle axis (which made a training step on 40k rows a batch 2–3× slower)."""
    if x.dim() == 2:
        return x.index_select(0, idx)
    k, n = x.shape[:2]
    flat = (idx + n * torch.arange(k)[:, None]).reshape(-1)
    return x.reshape(k * n, -1).index_select(0, flat).reshape(k, len(idx), -1)


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a Linear weight (out, in), or for one per copy (copies, out, in) -> (copies, n, out).
    The copies as one matrix product (n, in) @ (in, copies x out): broadcasting x against the stacked
    weights instead ran a batched product over `copies` materialised copies of x, the largest cost of
    a step with 384-wide text features (about 40% of the train stage's uplift fit)."""
    if weight.dim() == 2:
        return x @ weight.T
    k, out, n_in = weight.shape
    return (x @ weight.reshape(k * out, n_in).T).reshape(len(x), k, out).transpose(0, 1)


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, row_of) with x == rows[row_of] when x (n, d) has at most n / 2 distinct rows; else None.
    Users often share a feature row (the simulator's 2,000 users have 144 profile texts; categorical
    attributes repeat): a tower then maps each distinct row once, not once per user."""
    if len(x) < 2 or x.shape[1] == 0:
        return None
    rows, row_of = torch.unique(x, dim=0, return_inverse=True)
    return (rows, row_of) if len(rows) <= len(x) // 2 else None


def row_space(x: torch.Tensor, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(coords, basis) with x == coords @ basis.T, basis (d, r) orthonormal, when x (n, d) has rank r at
    most d / 2 (singular values below tol x the largest dropped: beneath float32 resolution); else None.
    FactorModel applies it to a table's distinct rows: the simulator's 144 distinct profile texts span 144
    of their 384 dimensions, and one-hot attributes span few. A linear tower then maps the r coordinates
    instead of the d features: the same scores and gradients (the gradient of x[idx] @ W.T lies in x's
    row space), for r / d of the work."""
    n, d = x.shape
    if d < 2 or n == 0:
        return None
    x64 = x.double()
    eigenvalues, vectors = torch.linalg.eigh(x64.T @ x64)  # of the (d, d) Gram matrix: cheaper than an SVD of x
    keep = eigenvalues > (tol ** 2) * eigenvalues[-1].clamp(min=0)
    if not eigenvalues[-1] > 0 or keep.sum() > d // 2:
        return None
    basis = vectors[:, keep]
    return (x64 @ basis).float(), basis.float()


class FactorModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, id_init_std: float = 0.1, sparse: bool = False):
        super().__init__()
        # sparse=True: gradients touch only the rows in the batch (large catalogues, SparseAdam).
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        self.global_bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.user.weight, std=id_init_std)
        nn.init.normal_(self.item.weight, std=id_init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        # Feature matrices are buffers (saved with the model, never trained); towers are linear maps.
        self.register_buffer("user_x", user_features if user_features is not None else torch.zeros(n_users, 0))
        self.register_buffer("item_z", item_features if item_features is not None else torch.zeros(n_items, 0))
        # What each tower maps (non-persistent: recomputed from the features when a model is built): the
        # table's distinct rows (row_of: each id's row among them), in coordinates of their row space
        # (basis) when that is narrow; None: the features as they are.
        for name, x in (("user", self.user_x), ("item", self.item_z)):
            rows, row_of = distinct_rows(x) or (x, None)
            coords, basis = row_space(rows) or (None, None)
            table = coords if coords is not None else (rows if row_of is not None else None)
            self.register_buffer(f"{name}_table", table, persistent=False)
            self.register_buffer(f"{name}_basis", basis, persistent=False)
            self.register_buffer(f"{name}_row_of", row_of, persistent=False)
        self.user_tower = nn.Linear(self.user_x.shape[1], dim + 1, bias=False) if self.user_x.shape[1] else None
        self.item_tower = nn.Linear(self.item_z.shape[1], dim + 1, bias=False) if self.item_z.shape[1] else None
        for tower in (self.user_tower, self.item_tower):
            if tower is not None:
                nn.init.normal_(tower.weight, std=0.01)

    @staticmethod
    def _side(table: nn.Embedding, bias: nn.Embedding, tower: nn.Linear | None, features: torch.Tensor,
              tower_input: tuple, idx: torch.Tensor, known: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select's backward (index_add) is about 25% faster on CPU than the dense embedding
        # backward; sparse tables keep the embedding op (sparse gradients for SparseAdam).
        # Written for weights with a leading axis of copies too (causalrec.causal.training.Stacked):
        # gathers on the row axis, the tower as a matmul that broadcasts.
        rows = (lambda t: t(idx)) if table.sparse else (lambda t: gather_rows(t.weight, idx))
        v, b = rows(table), rows(bias).squeeze(-1)
        if known is not None:
            v, b = v * known[:, None], b * known
        if tower is not None:
            mapped, basis, row_of = tower_input
            x = features if mapped is None else mapped  # features == (mapped @ basis.T)[row_of]
            weight = tower.weight if basis is None else tower.weight @ basis
            at = idx if row_of is None else row_of.index_select(0, idx)  # the batch's rows of x
            # The tower is linear, so tower(x)[at] == tower(x[at]): with at least as many rows in the
            # batch as in the table, projecting the table and gathering the narrow result is the cheaper
            # order (5,120 DR rows over 1,000 items: the 384-wide gather per row was most of a step).
            t = gather_rows(project(x, weight), at) if len(at) >= len(x) else project(x.index_select(0, at), weight)
            v, b = v + t[..., :-1], b + t[..., -1]
        return v, b

    def _tower_input(self, side: str) -> tuple:
        """(table, basis, row_of) of a side's features (see __init__)."""
        return tuple(getattr(self, f"{side}_{part}") for part in ("table", "basis", "row_of"))

    def user_vectors(self, u: torch.Tensor, known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, bias) of user rows u; `known` = False zeroes the id part (cold users)."""
        return self._side(self.user, self.user_bias, self.user_tower, self.user_x, self._tower_input("user"), u, known)

    def item_vectors(self, i: torch.Tensor, known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, bias) of item rows i; `known` = False zeroes the id part (cold items)."""
        return self._side(self.item, self.item_bias, self.item_tower, self.item_z, self._tower_input("item"), i, known)

    def score_terms(self, u: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(<p_u, q_i>, b_u + b_i + b) of the rows (u, i): the score's two terms, for a learner that also
        uses the interaction on its own (an exposure head: alpha x <p_u, q_i> + its own biases)."""
        p, bu = self.user_vectors(u)
        q, bi = self.item_vectors(i)
        return (p * q).sum(-1), bu + bi + self.global_bias

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        interaction, bias = self.score_terms(u, i)
        return interaction + bias
