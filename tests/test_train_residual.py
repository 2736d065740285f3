"""Training a model with reference inputs and the residual flow: every stage runs, the loss falls,
the flags are saved and survive an exact resume; the architecture check behind gpu_train.sh."""

import json

import torch

from core.model.pipeline import FourDModel
from core.train.checkpoint import same_architecture
from core.train.config import TrainConfig
from core.train.data import Batch
from core.train.flow import add_noise, masked_x0_velocity_loss
from core.train.loop import encode_text_train, train, train_step, trainable
from core.train.masks import grid_mask, parse_families

torch.set_num_threads(1)


def _cfg(out, **kw):
    base = dict(out=str(out), preset="tiny", views=2, times=3, minutes=10, max_steps=2, batch=2,
                schedule="1@16x16:0.5,3@16x16:0.5", eval_scenes=1, eval_steps=1, eval_size="16x16",
                eval_every_min=10, save_every_min=10, log_every=1, warmup_steps=1, device="cpu",
                reference_inputs=True, residual=True)
    base.update(kw)
    return TrainConfig(**base)


def test_residual_model_trains_all_stages_saves_its_flags_and_resumes(tmp_path):
    out = tmp_path / "run"
    s1 = train(_cfg(out, schedule="1@16x16:1"), log=lambda s: None)  # stage 1: rows and columns
    layers = json.loads((out / "model" / "fourd_layers" / "config.json").read_text())
    assert layers["reference_inputs"] is True and layers["residual"] is True
    s2 = train(_cfg(out, resume=str(out), schedule="3@16x16:1", reference_inputs=None, residual=None),
               log=lambda s: None)
    assert (s1["step"], s2["step"]) == (2, 4)
    m = FourDModel.from_pretrained(out / "model")
    assert m.transformer.residual and m.transformer.reference_inputs


def test_residual_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = _cfg("unused")
    import dataclasses

    from core.model.config import preset

    model = FourDModel.from_config(dataclasses.replace(preset("tiny"), reference_inputs=True, residual=True))
    net = trainable(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    low = torch.rand(4, 2, 3, 3, 4, 4, generator=g)
    x0 = torch.nn.functional.interpolate(low.reshape(-1, 3, 4, 4), size=(16, 16), mode="bilinear")
    x0 = x0.reshape(4, 2, 3, 3, 16, 16) * 2 - 1
    b = Batch(x0, ["a red box on a gray floor"] * 4, torch.zeros(4, dtype=torch.long))
    known = grid_mask("row0+col0", 2, 3).expand(4, -1, -1)
    sigma = torch.tensor([0.3, 0.5, 0.7, 0.9])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def loss():
        with torch.no_grad():
            text = encode_text_train(model.text, b.captions, "cpu")
            ref = model.transformer.flow_reference(x0, known)
            x0_hat = model.transformer(add_noise(x0, noise + ref, sigma), sigma, text, cond=x0, known=known,
                                       output="x0")
            return masked_x0_velocity_loss(x0_hat, x0, known, sigma).item()

    before = loss()
    for _ in range(40):
        train_step(model, net, opt, [b], 3, cfg, parse_families("row0+col0"), g, torch.device("cpu"))
    assert loss() < 0.8 * before


def test_architecture_check_tells_old_folders_from_the_preset(tmp_path):
    import dataclasses

    from core.model.config import preset

    plain = FourDModel.from_preset("tiny").save_pretrained(tmp_path / "plain")
    flagged = FourDModel.from_config(dataclasses.replace(preset("tiny"), reference_inputs=True, residual=True))
    assert same_architecture(plain, "tiny")
    assert not same_architecture(flagged.save_pretrained(tmp_path / "flagged"), "tiny")
    assert not same_architecture(plain, "default")
    assert not same_architecture(tmp_path / "missing", "tiny")
