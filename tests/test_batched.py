"""The vmap machinery against the plain one-model-at-a-time reference."""
import torch
import torch.nn.functional as F
from conftest import assert_stacked_is_each_model

from weightspace.nets import BatchedAdamW, Stacked, make_vit
from weightspace.nets.batched import lr_schedule


def _models(M, seed=0):
    out = []
    for m in range(M):
        torch.manual_seed(seed + m)
        out.append(make_vit(5, embed_dim=8, depth=1, num_heads=2))
    return out


def test_stacked_forward_matches_each_model():
    models = _models(3)
    net = Stacked(lambda: make_vit(5, embed_dim=8, depth=1, num_heads=2), [m.state_dict() for m in models])
    x = torch.randn(3, 4, 1, 8, 8)
    out = net(x)
    for m, model in enumerate(models):
        assert torch.allclose(out[m], model(x[m]), atol=1e-5)
    feats = net(x, method="forward_features")
    assert torch.allclose(feats[1], models[1].forward_features(x[1]), atol=1e-5)
    back = net.state_dicts()
    assert all(torch.equal(back[m][k], models[m].state_dict()[k]) for m in range(3) for k in back[m])


def test_stacked_vit_forward_is_timms_function_and_gradient():
    """The batched products of nets.vit.stacked_forward equal each timm module (outputs and every weight's
    gradient), for both poolings, two widths and depths; anything else timm builds falls back to vmap."""
    for cfg in (dict(global_pool="avg"), dict(global_pool="token", embed_dim=16, num_heads=4, depth=3)):
        models = []
        for m in range(3):
            torch.manual_seed(m)
            models.append(make_vit(7, **cfg))
            with torch.no_grad():
                for p in models[-1].parameters():
                    p.add_(0.05 * torch.randn_like(p))         # cls token, pos embed, heads away from 0
        net = Stacked(lambda: make_vit(7, **cfg), [m.state_dict() for m in models])
        assert net.vit is not None and net.vit["pool"] == cfg["global_pool"]
        x, y = torch.randn(3, 5, 1, 8, 8), torch.randint(0, 7, (3, 5))
        assert_stacked_is_each_model(net, models, x, y, lambda o, t: F.cross_entropy(o, t, reduction="sum"))
    for odd in (dict(class_token=False, global_pool="avg"), dict(drop_rate=0.1), dict(qkv_bias=False),
                dict(init_values=1e-5), dict(reg_tokens=2)):
        model = make_vit(7, **odd).eval()
        net = Stacked(lambda: make_vit(7, **odd).eval(), [model.state_dict()])
        x = torch.randn(1, 2, 1, 8, 8)
        assert net.vit is None and torch.allclose(net(x)[0], model(x[0]), atol=1e-5), odd     # vmap of timm's


def test_batched_adamw_equals_independent_adamw():
    """Three models, three learning rates, one of which stops early: same as three torch AdamWs."""
    models = _models(3, seed=10)
    sds = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    net = Stacked(lambda: make_vit(5, embed_dim=8, depth=1, num_heads=2), sds)
    opt = BatchedAdamW(net.trainable(), weight_decay=0.1, decay=lambda n, p: p.ndim >= 3)
    base = torch.tensor([1e-2, 3e-3, 1e-3])
    steps = torch.tensor([4, 2, 4])
    refs = []
    for m, model in enumerate(models):
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        rest = [p for n, p in model.named_parameters() if p.ndim < 2]
        refs.append(torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                       {"params": rest, "weight_decay": 0.0}], lr=float(base[m])))
    g = torch.Generator().manual_seed(0)
    for t in range(4):
        x = torch.randn(3, 6, 1, 8, 8, generator=g)
        y = torch.randint(0, 5, (3, 6), generator=g)
        loss = F.cross_entropy(net(x).flatten(0, 1), y.flatten(), reduction="none").view(3, 6).mean(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step(lr_schedule(base, steps, torch.zeros(3, dtype=torch.long), t))
        for m, model in enumerate(models):
            if t < int(steps[m]):
                refs[m].zero_grad()
                F.cross_entropy(model(x[m]), y[m]).backward()
                refs[m].step()
    for m, model in enumerate(models):
        for k, v in model.state_dict().items():
            got = net.params[k][m]
            if k.endswith("qkv.bias"):
                # softmax ignores the key bias: its true gradient is 0 and Adam blows float noise up
                # to +-lr, differently in any two implementations. Compare query and value parts.
                got, v = torch.cat([got[:8], got[16:]]), torch.cat([v[:8], v[16:]])
            assert torch.allclose(got, v, atol=1e-6), (m, k)


def test_lr_schedules_by_hand():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0])
    steps = torch.tensor([4, 4, 4, 2])
    sched = torch.tensor([0, 1, 2, 0])
    assert lr_schedule(base, steps, sched, 0).tolist() == [1.0, 1.0, 1.0, 1.0]
    lr2 = lr_schedule(base, steps, sched, 2)
    assert torch.allclose(lr2, torch.tensor([1.0, 0.5, 0.5, 0.0]))    # cos(pi/2): 0.5; linear 1 - 2/4
    assert lr_schedule(base, steps, sched, 4).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert torch.allclose(lr_schedule(base, steps, sched, 0, warmup=4), torch.full((4,), 0.25))
