import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from elta_core import apds, flsa, losses  # noqa: E402
from elta_core.adapters.torch import ELTAWrapper, predict, to_distribution_head  # noqa: E402
from tests import step_cases  # noqa: E402
from tests.torch_models import NIMA, TwoLayer, distributions  # noqa: E402


def test_eval_mode_returns_the_model_output_bit_for_bit():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    wrapper = ELTAWrapper(model, "fc", num_pairs=4).eval()
    x = torch.randn(3, 3, 64, 64)
    expected = model(x)
    assert torch.equal(wrapper(x), expected)
    assert torch.equal(wrapper(x, distributions(3)), expected)  # labels are ignored in eval
    wrapper.train()
    model.train(False)  # BatchNorm in eval for a deterministic comparison, wrapper in train
    assert torch.equal(wrapper(x), model(x)), "without labels the hooks stay inactive"


def test_head_sees_mixed_rows_that_equal_eq1():
    model = TwoLayer()
    seen = {}
    wrapper = ELTAWrapper(model, "fc", num_pairs=3, seed=1, flsa_weight=0.0)
    model.fc.register_forward_pre_hook(lambda module, args: seen.update(head_input=args[0]))
    x, y = torch.randn(8, 4), torch.rand(8) * 9 + 1
    out = wrapper(x, y)
    features = torch.tanh(model.backbone(x))
    i, j, lam = out.pairs
    expected = torch.cat([features, lam[:, None] * features[i] + (1 - lam[:, None]) * features[j]])
    assert seen["head_input"].shape[0] == 8 + 3
    torch.testing.assert_close(seen["head_input"], expected)
    torch.testing.assert_close(out.labels, torch.cat([y, lam * y[i] + (1 - lam) * y[j]]))
    assert out.predictions.shape == (11, 10)


def test_same_seed_same_pairs_same_loss():
    model = TwoLayer()
    x, y = torch.randn(16, 4), distributions(16)
    runs = [ELTAWrapper(copy.deepcopy(model), "fc", num_pairs=4, seed=7)(x, y) for _ in range(2)]
    for a, b in zip(runs[0].pairs, runs[1].pairs):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(runs[0].loss, runs[1].loss)
    other = ELTAWrapper(copy.deepcopy(model), "fc", num_pairs=4, seed=8)(x, y)
    assert not torch.equal(other.pairs.i, runs[0].pairs.i) or not torch.equal(other.pairs.j, runs[0].pairs.j)


@pytest.mark.parametrize("use_tfa", [False, True])
@pytest.mark.parametrize("flsa_weight", [0.0, 0.5])
def test_each_module_switches_alone(use_tfa, flsa_weight):
    model = TwoLayer()
    x, y = torch.randn(12, 4), distributions(12)
    out = ELTAWrapper(model, "fc", tfa=use_tfa, num_pairs=2, flsa_weight=flsa_weight, seed=0)(x, y)
    assert out.predictions.shape[0] == (14 if use_tfa else 12)
    assert (out.pairs is not None) == use_tfa
    features = torch.tanh(model.backbone(x))
    if use_tfa:
        i, j, lam = out.pairs
        features = torch.cat([features, lam[:, None] * features[i] + (1 - lam[:, None]) * features[j]])
    expected_flsa = flsa.alignment_loss(features, out.labels) if flsa_weight else torch.tensor(0.0)
    expected_task = losses.emd(torch.softmax(out.predictions, 1), out.labels)
    torch.testing.assert_close(out.flsa_loss, expected_flsa)
    torch.testing.assert_close(out.task_loss, expected_task)
    torch.testing.assert_close(out.loss, expected_task + flsa_weight * expected_flsa)
    out.loss.backward()


def test_scalar_labels_use_mse_and_scalar_heads_work():
    model = TwoLayer(out=1)
    x, y = torch.randn(10, 4), torch.rand(10) * 9 + 1
    out = ELTAWrapper(model, "fc", num_pairs=2, seed=0)(x, y)
    torch.testing.assert_close(out.task_loss, ((out.predictions[:, 0] - out.labels) ** 2).mean())
    out.loss.backward()


def test_mix_at_a_named_layer_and_at_the_input():
    model = TwoLayer()
    x, y = torch.randn(8, 4), torch.rand(8) * 9 + 1
    layer = ELTAWrapper(model, "fc", mix_at="backbone", num_pairs=2, seed=0)(x, y)
    assert layer.predictions.shape[0] == 10 and layer.features.shape[0] == 10
    pixels = ELTAWrapper(model, "fc", mix_at="input", num_pairs=2, seed=0)(x, y)
    i, j, lam = pixels.pairs
    mixed_input = lam[:, None] * x[i] + (1 - lam[:, None]) * x[j]
    torch.testing.assert_close(pixels.predictions[8:], model(mixed_input))


def test_backbone_and_head_modules():
    model = NIMA()
    wrapper = ELTAWrapper(backbone=model.backbone, head=model.head, num_pairs=2, output="probs", seed=0)
    out = wrapper(torch.randn(6, 3, 32, 32), distributions(6))
    assert out.predictions.shape == (8, 10)
    out.loss.backward()
    assert model.backbone[0].weight.grad is not None


def _all_three_modules(model, head, x, y, **options):
    wrapper = ELTAWrapper(model, head, num_pairs=2, flsa_weight=1.0, seed=0, **options)
    out = wrapper(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    logits, _ = predict(wrapper, [(x, y)], progress=False)
    sharp = apds.sharpen(logits, 1.2)
    assert torch.allclose(sharp.sum(1), torch.ones(len(x)))
    assert apds.select(logits, 1.2, 0.05).indices.numel() == len(x)


@pytest.mark.parametrize(
    "name,head,size",
    [("resnet18", "fc", 64), ("mobilenet_v3_small", "classifier", 64), ("swin_v2_t", "head", 64), ("maxvit_t", "classifier", 224)],
)
def test_torchvision_models(name, head, size):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    batch = 2 if name == "maxvit_t" else 4
    assert ELTAWrapper(model, "auto").head_name == head
    _all_three_modules(model, "auto", torch.randn(batch, 3, size, size), distributions(batch))


@pytest.mark.parametrize("name,head,size", [
    ("resnet18", "fc", 64), ("convnext_atto", "head.fc", 64), ("vit_tiny_patch16_224", "head", 224),
    ("swinv2_tiny_window8_256", "head.fc", 256),
])
def test_timm_models_find_their_head(name, head, size):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    assert ELTAWrapper(model, "auto").head_name == head
    _all_three_modules(model, "auto", torch.randn(2, 3, size, size), distributions(2))


def test_hugging_face_image_model_finds_its_classifier():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config)
    assert ELTAWrapper(model, "auto").head_name == "classifier"
    _all_three_modules(model, "auto", torch.randn(4, 3, 32, 32), distributions(4))


def test_auto_head_names_the_candidates_when_it_cannot_tell():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.top = nn.Linear(8, 10)

        def forward(self, x):
            return self.top(self.body(x))

    with pytest.raises(ValueError, match="head: cannot tell the head of Odd .* pass head= one of: body, top"):
        ELTAWrapper(Odd(), "auto")


def test_nima_style_model():
    _all_three_modules(NIMA(), "head", torch.randn(6, 3, 32, 32), distributions(6), output="probs")


def test_autocast_bf16_on_cpu():
    model = NIMA()
    wrapper = ELTAWrapper(model, "head.1", num_pairs=2, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrapper(torch.randn(8, 3, 32, 32), distributions(8))
    assert out.flsa_loss.dtype == torch.float32 and out.task_loss.dtype == torch.float32
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_accumulation_adds_micro_batches():
    model = TwoLayer()
    wrapper = ELTAWrapper(model, "fc", tfa=False, flsa_weight=0.0)
    x, y = torch.randn(8, 4), distributions(8)
    wrapper(x, y).loss.backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        (wrapper(x[half], y[half]).loss / 2).backward()
    for a, b in zip(full, model.parameters()):
        torch.testing.assert_close(a, b.grad)
    ELTAWrapper(model, "fc", num_pairs=2, seed=0)(x[:4], y[:4]).loss.backward()  # with TFA + FLSA too


@pytest.mark.slow
def test_torch_compile():
    model = TwoLayer()
    wrapper = ELTAWrapper(model, "fc", num_pairs=2, seed=0)
    compiled = torch.compile(wrapper, backend="aot_eager")
    x, y = torch.randn(8, 4), distributions(8)
    expected = ELTAWrapper(copy.deepcopy(model), "fc", num_pairs=2, seed=0)(x, y)
    out = compiled(x, y)
    torch.testing.assert_close(out.loss, expected.loss)
    out.loss.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    model = TwoLayer().cuda()
    out = ELTAWrapper(model, "fc", num_pairs=2, seed=0)(torch.randn(8, 4).cuda(), distributions(8).cuda())
    out.loss.backward()


def test_apds_on_a_scalar_head_points_to_the_helper():
    model = TwoLayer(out=1)
    wrapper = ELTAWrapper(model, "fc")
    with pytest.raises(ValueError, match="to_distribution_head"):
        predict(wrapper, [torch.randn(4, 4)], progress=False)
    to_distribution_head(model, "fc", num_bins=9)
    logits, _ = predict(ELTAWrapper(model, "fc", bin_values=np.arange(1, 5.01, 0.5)), [torch.randn(4, 4)], progress=False)
    assert logits.shape == (4, 9)


def test_bad_inputs():
    model = TwoLayer()
    wrapper = ELTAWrapper(model, "fc")
    with pytest.raises(ValueError, match="y: expected 8 labels to match the batch of x, got 5"):
        wrapper(torch.randn(8, 4), torch.rand(5))
    with pytest.raises(ValueError, match="y: expected distributions over the model's 10 outputs, got 9 levels"):
        wrapper(torch.randn(8, 4), distributions(8, num_bins=9))
    with pytest.raises(ValueError, match=r"head: TwoLayer has no submodule 'fcc' \(nearest names: fc"):
        ELTAWrapper(model, "fcc")
    with pytest.raises(ValueError, match="mix_at: TwoLayer has no submodule 'backbon'"):
        ELTAWrapper(model, "fc", mix_at="backbon")
    with pytest.raises(ValueError, match="y: expected finite labels"):
        wrapper(torch.randn(8, 4), torch.full((8,), float("nan")))
    with pytest.raises(ValueError, match="num_pairs"):
        ELTAWrapper(model, "fc", num_pairs=-1)
    with pytest.raises(ValueError, match="flsa_weight"):
        ELTAWrapper(model, "fc", flsa_weight=-1)

    class Exploding(TwoLayer):
        def forward(self, x):
            return super().forward(x) * float("inf")

    with pytest.raises(FloatingPointError, match="task loss"):
        ELTAWrapper(Exploding(), "fc", flsa_weight=0.0)(torch.randn(8, 4), torch.rand(8) * 9 + 1)


def test_nan_input_is_a_named_error_not_a_finite_loss():
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10))
    wrapper = ELTAWrapper(model, head="2", flsa_weight=0.0).train()
    x = torch.randn(8, 12)
    x[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="task loss"):
        wrapper(x, torch.softmax(torch.randn(8, 10), 1))
    assert torch.isnan(losses.emd(torch.full((4, 10), float("nan")), distributions(4), validate=False))


@pytest.mark.parametrize("case", step_cases.BAD_LABELS, ids=[c[0] for c in step_cases.BAD_LABELS])
def test_shared_bad_labels_are_refused(case):
    _, make_labels, message = case
    labels = torch.as_tensor(make_labels(step_cases.distributions(8)))
    with pytest.raises(ValueError, match=message):
        ELTAWrapper(TwoLayer(), "fc", seed=0)(torch.randn(8, 4), labels)


@pytest.mark.parametrize("case", step_cases.GOOD_LABELS, ids=[c[0] for c in step_cases.GOOD_LABELS])
def test_shared_good_labels_train(case):
    _, make_labels = case
    out = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0)(torch.randn(8, 4),
                                                             torch.as_tensor(make_labels(step_cases.distributions(8))))
    assert torch.isfinite(out.loss) and out.predictions.shape[0] == 10
    out.loss.backward()


def test_probs_output_on_logits_and_an_unused_head_are_refused():
    with pytest.raises(ValueError, match="output: 'probs' expects softmax rows"):
        ELTAWrapper(TwoLayer(), "fc", output="probs")(torch.randn(8, 4), distributions(8))

    class SkipsHead(TwoLayer):
        def forward(self, x):
            return torch.tanh(self.backbone(x)) @ torch.ones(6, 10)

    with pytest.raises(ValueError, match="'fc' was not called"):
        ELTAWrapper(SkipsHead(), "fc")(torch.randn(8, 4), distributions(8))
    with pytest.raises(ValueError, match="bogus: not an option of ELTAWrapper"):
        ELTAWrapper(TwoLayer(), "fc", bogus=1)
    with pytest.raises(ValueError, match="tfa: expected True or False"):
        ELTAWrapper(TwoLayer(), "fc", tfa=1.0)


def test_softmax_head_is_detected_as_probs():
    wrapper = ELTAWrapper(NIMA(), "head")
    assert wrapper.output_kind(torch.softmax(torch.randn(2, 10), 1)) == "probs"
    assert ELTAWrapper(TwoLayer(), "fc").output_kind(torch.randn(2, 10)) == "logits"


def test_output_reads_like_a_hugging_face_model_output_and_labels_keyword():
    wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0)
    x, y = torch.randn(8, 4), distributions(8)
    out = wrapper(x, labels=y)
    assert out[0] is out.loss is out["loss"] and out["logits"] is out.predictions
    assert out.keys()[0] == "loss" and len(out.to_tuple()) == 5
    with pytest.raises(KeyError):
        out["nope"]
    with pytest.raises(ValueError, match="labels: give the labels once"):
        wrapper(x, y, labels=y)


def test_torchmetrics_metric_equals_the_whole_set_on_score_sorted_batches():
    pytest.importorskip("torchmetrics")
    from elta_core import metrics
    from elta_core.adapters.torch.metrics import AestheticsMetrics

    generator = torch.Generator().manual_seed(0)
    true = torch.rand(90, generator=generator, dtype=torch.float64) * 9 + 1
    pred = true + torch.randn(90, generator=generator, dtype=torch.float64)
    order = torch.argsort(true)
    metric, plcc = AestheticsMetrics(), AestheticsMetrics(key="plcc")
    for rows in order.split(16):  # score-sorted batches: the mean of per-batch PLCCs is far off
        metric.update(pred[rows], true[rows])
        plcc.update(pred[rows], true[rows])
    expected = metrics.evaluate(pred.numpy(), true.numpy())
    for key, value in metric.compute().items():
        assert float(value) == pytest.approx(expected[key], rel=1e-12), key
    assert float(plcc.compute()) == pytest.approx(expected["plcc"], rel=1e-12)


class _Items(torch.utils.data.Dataset):
    """Hugging Face style items: ``{"x": ..., "labels": ...}``."""

    def __init__(self, size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(size, 4, generator=generator), distributions(size)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        return {"x": self.x[k], "labels": self.y[k]}


def test_a_plain_transformers_trainer_trains_a_wrapped_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    torch.manual_seed(0)
    model = TwoLayer()
    before = [p.detach().clone() for p in model.parameters()]
    wrapper = ELTAWrapper(model, "fc", num_pairs=2, seed=0)
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3,
                                               use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                                               learning_rate=1e-2)
    result = transformers.Trainer(model=wrapper, args=arguments, train_dataset=_Items(32, 0)).train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_transformers_trainer_evaluate_and_predict_equal_a_plain_loop(tmp_path):
    """In eval mode the wrapper returned bare logits: the Trainer took row 0 as the loss
    (eval_loss -0.068 for an EMD of 0.070) and dropped it from the predictions (60 of 64)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    torch.manual_seed(0)
    wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0)
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=16, use_cpu=True,
                                               report_to=[])
    trainer = transformers.Trainer(model=wrapper, args=arguments)
    items = _Items(64, 1)
    wrapper.eval()
    with torch.no_grad():
        logits = wrapper(items.x)
        per_batch = [losses.emd(torch.softmax(logits[k:k + 16], 1), items.y[k:k + 16]) for k in range(0, 64, 16)]
    evaluated = trainer.evaluate(items)
    assert evaluated["eval_loss"] == pytest.approx(float(torch.stack(per_batch).mean()), rel=1e-5)
    predicted = trainer.predict(items)
    assert predicted.predictions.shape == (64, 10) and predicted.label_ids.shape == (64, 10)
    np.testing.assert_allclose(predicted.predictions, logits.numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(wrapper(items.x[:3], items.y[:3]), wrapper.model(items.x[:3]))  # positional labels: as before


def test_make_optimizer_takes_the_fused_kernel_and_updates_as_the_default_does():
    from elta_core.adapters.torch.loop import make_optimizer

    torch.manual_seed(0)
    fast, plain = TwoLayer(), TwoLayer()
    plain.load_state_dict(fast.state_dict())
    fused = make_optimizer(torch.optim.AdamW, fast.parameters(), lr=1e-2)
    reference = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    assert fused.defaults["fused"] is True and not reference.defaults.get("fused")
    x = torch.randn(16, 4)
    for _ in range(10):
        for model, optimizer in ((fast, fused), (plain, reference)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not make_optimizer(torch.optim.AdamW, fast.parameters(), lr=1e-2, fused=False).defaults["fused"]
    assert "fused" not in make_optimizer(torch.optim.RMSprop, fast.parameters(), lr=1e-2).defaults


def test_make_optimizer_falls_back_where_the_fused_kernel_refuses_the_parameters():
    from elta_core.adapters.torch.loop import make_optimizer

    class NoFusedHere(torch.optim.AdamW):
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **options)

    optimizer = make_optimizer(NoFusedHere, TwoLayer().parameters(), lr=1e-3)
    assert type(optimizer) is NoFusedHere and not optimizer.defaults.get("fused")


def test_lr_schedule_cosine_decays_per_epoch_and_bad_values_are_named():
    from elta_core.adapters.torch import fit
    from elta_core.training_options import lr_factor

    cosine = lr_factor("cosine", 4)
    assert [cosine(e) for e in range(4)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    assert lr_factor("constant", 4)(3) == 1.0
    with pytest.raises(ValueError, match="lr_schedule: expected one of constant, cosine, got 'step'"):
        lr_factor("step", 4)
    with pytest.raises(ValueError, match="epochs: expected an int >= 1, got 0"):
        lr_factor("cosine", 0)
    wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0)
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.1)
    seen = []
    loader = [(torch.randn(8, 4), torch.rand(8) * 9 + 1)]
    for epoch in range(4):  # one epoch at a time, as elta train runs them: the schedule follows the epoch index
        fit(wrapper, loader, optimizer, epochs=1, first_epoch=epoch, progress=False, lr_schedule=cosine)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1 * cosine(e) for e in range(4)])
