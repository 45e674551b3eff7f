"""Membership inference: can an attacker who holds a person's rows tell whether they were trained on?

The attack reads what a jointly private model publishes, its shared (item) side: it fits the person's
own vector and bias to their rows with the item side frozen (a fold-in, as a new user would be
served) and scores them by the loss left on those rows. Item vectors that memorised a member's rows
fit them better: a lower loss says "member". No shadow models: a loss-threshold attack (Yeom et al.
2018) made per user, its power the AUC of members against non-members (0.5: no better than a coin;
a differentially private model bounds it: the attack's true- and false-positive rates obey
TPR <= e^epsilon FPR + delta).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def fold_in_losses(model, users, items, y, steps: int = 150, lr: float = 0.05, l2: float = 0.1) -> pd.Series:
    """Per user: the mean cross-entropy on their rows after fitting their vector and bias to those rows
    (l2: the prior on the vector, on the user's mean loss), the model's item side frozen.
    `model`: a DebiasedRecommender (binary objective)."""
    users, items = np.asarray(users).astype(str), np.asarray(items).astype(str)
    y = torch.as_tensor(np.asarray(y, np.float32))
    codes, uniques = pd.factorize(users)
    u = torch.as_tensor(codes)
    with torch.no_grad():
        i, warm, known = model._encode(items, model.items_, model.trained_items_)
        q, bi = model.net_.item_vectors(i, warm)
        q, bi = q * known[:, None], bi * known
        offset = bi + model.net_.global_bias
    n = len(uniques)
    counts = torch.bincount(u, minlength=n).float()
    p = torch.zeros(n, q.shape[1], requires_grad=True)
    b = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([p, b], lr=lr)
    for _ in range(steps):
        logits = (q * p[u]).sum(-1) + b[u] + offset
        per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        per_user = torch.zeros(n).index_add_(0, u, per_row) / counts
        loss = (per_user + l2 * (p ** 2).sum(-1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = (q * p[u]).sum(-1) + b[u] + offset
        per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        per_user = torch.zeros(n).index_add_(0, u, per_row) / counts
    return pd.Series(per_user.numpy(), index=uniques)


def attack_auc(model, members: tuple, non_members: tuple, **fold_in) -> float:
    """AUC of the loss-threshold attack: members' (users, items, y) rows against non-members'; 0.5 = chance."""
    from causalrec.evaluation.metrics import auc

    loss_in = fold_in_losses(model, *members, **fold_in)
    loss_out = fold_in_losses(model, *non_members, **fold_in)
    labels = np.r_[np.ones(len(loss_in)), np.zeros(len(loss_out))]
    return float(auc(labels, -np.r_[loss_in.to_numpy(), loss_out.to_numpy()]))
