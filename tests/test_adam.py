"""The learner's own Adam and gradient clip give torch.optim.Adam's and clip_grad_norm_'s bits, step by
step, and its state moves to and from torch.optim.Adam's (a saved Forecaster's optimiser state)."""
import torch

from streamseq.models.adam import Adam, clip_grad_norm


def nets():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.GRUCell(3, 5), torch.nn.Linear(5, 2))
    b = torch.nn.Sequential(torch.nn.GRUCell(3, 5), torch.nn.Linear(5, 2))
    b.load_state_dict(a.state_dict())
    return a, b


def step(net, opt, clip, x, h):
    opt.zero_grad(set_to_none=True)
    loss = net[1](net[0](x, h)).pow(2).mean()
    loss.backward()
    clip(list(net.parameters()), 0.5)
    opt.step()


def theirs_clip(params, max_norm):
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def test_same_bits_as_torch_adam_and_clip():
    a, b = nets()
    ours, theirs = Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2, foreach=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        x, h = torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)
        step(a, ours, clip_grad_norm, x, h)
        step(b, theirs, theirs_clip, x, h)
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_state_moves_between_our_adam_and_torch_adam():
    a, b = nets()
    ours = Adam(a.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)) for _ in range(20)]
    for x, h in data[:10]:
        step(a, ours, clip_grad_norm, x, h)
    b.load_state_dict(a.state_dict())
    theirs = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=True)
    theirs.load_state_dict(ours.state_dict())
    back = Adam(a.parameters(), lr=1e-3)  # lr and moments come from the state
    back.load_state_dict(theirs.state_dict())
    for x, h in data[10:]:
        step(a, back, clip_grad_norm, x, h)
        step(b, theirs, theirs_clip, x, h)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert Adam(a.parameters()).state_dict()["state"] == {}  # before any step, as torch's
