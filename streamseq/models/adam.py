"""Adam for the online learner: torch's foreach Adam step, without ``torch.optim``'s machinery.

``torch.optim.Adam`` imports ``torch._dynamo`` when it is built (about 1.5 s of start-up on
our machines) and spends ~0.1 ms of Python per step on hooks, grouping and checks. The
online learner takes thousands of tiny steps, so this runs the same foreach ops in the same
order as ``torch.optim.adam._multi_tensor_adam`` (float32 CPU parameters; no weight decay,
amsgrad, maximize or capturable): the parameters it produces are the same bits
(tests/test_rnn.py checks it against ``torch.optim.Adam`` step by step). ``clip_grad_norm``
is ``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`` the same way.
"""
from __future__ import annotations

import torch


class Adam:
    """Adam over a fixed list of parameters that all receive a gradient at every step."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = 0  # torch keeps it as a float32 tensor per parameter: exact for any count we reach

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """torch.optim.Adam's layout (per parameter index: step, exp_avg, exp_avg_sq; one param group),
        so a saved learner loads into either."""
        state = {} if self.steps == 0 else {
            i: {"step": torch.tensor(float(self.steps)), "exp_avg": a.clone(), "exp_avg_sq": b.clone()}
            for i, (a, b) in enumerate(zip(self.exp_avgs, self.exp_avg_sqs))}
        group = {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps, "weight_decay": 0.0,
                 "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": None, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("Adam state: one group with one entry per parameter expected")
        g = groups[0]
        self.lr, self.eps = float(g["lr"]), float(g["eps"])
        self.beta1, self.beta2 = (float(b) for b in g["betas"])
        state = {int(k): v for k, v in state_dict["state"].items()}
        if not state:
            self.steps = 0
            for t in (*self.exp_avgs, *self.exp_avg_sqs):
                t.zero_()
            return
        steps = {int(float(state[i]["step"])) for i in range(len(self.params))}
        if len(steps) != 1:
            raise ValueError("Adam state: parameters at different step counts")
        self.steps = steps.pop()
        with torch.no_grad():
            for i, (a, b) in enumerate(zip(self.exp_avgs, self.exp_avg_sqs)):
                a.copy_(torch.as_tensor(state[i]["exp_avg"]).reshape(a.shape))
                b.copy_(torch.as_tensor(state[i]["exp_avg_sq"]).reshape(b.shape))

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):  # torch.optim skips such parameters; ours always get one
            raise RuntimeError("Adam: every parameter must have a gradient")
        self.steps += 1
        step = float(self.steps)
        torch._foreach_lerp_(self.exp_avgs, grads, 1 - self.beta1)
        torch._foreach_mul_(self.exp_avg_sqs, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sqs, grads, grads, 1 - self.beta2)
        bias_correction1 = 1 - self.beta1 ** step
        bias_correction2 = 1 - self.beta2 ** step
        step_size = [(self.lr / bias_correction1) * -1] * len(self.params)
        bias_correction2_sqrt = [bias_correction2 ** 0.5] * len(self.params)
        denom = torch._foreach_sqrt(self.exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.exp_avgs, denom, step_size)


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`` (2-norm, CPU float32)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)
    return total


__all__ = ["Adam", "clip_grad_norm"]
