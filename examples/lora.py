"""LoRA adapters trained on top of a frozen FP6 base (one ``jax_fpx.linear`` per layer).

    python examples/lora.py

The base kernels are quantized once and never change: they are passed to the loss as a
separate, non-differentiated argument, so ``jax.grad`` only sees the float adapters. (If
you differentiate a tree that contains an ``FPxWeight``, use ``allow_int=True``: the packed
codes get ``float0`` cotangents; the scales get their true gradient.)

    y = jax_fpx.linear(x, w_base) + ((x @ A) @ B) * (alpha / rank)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jax_fpx


def init(key, sizes=(256, 512, 256), rank=8, fmt="fp6_e3m2"):
    """Returns (base, adapters): a frozen FP6 MLP and its LoRA adapters (B = 0 at init)."""
    base, adapters = [], []
    for i, (din, dout) in enumerate(zip(sizes[:-1], sizes[1:])):
        k_w, k_a = jax.random.split(jax.random.fold_in(key, i))
        kernel = jax.random.normal(k_w, (din, dout), jnp.float32) / jnp.sqrt(din)
        base.append({"kernel": jax_fpx.quantize(kernel, fmt), "bias": jnp.zeros((dout,), jnp.float32)})
        adapters.append(
            {
                "A": jax.random.normal(k_a, (din, rank), jnp.float32) / jnp.sqrt(din),
                "B": jnp.zeros((rank, dout), jnp.float32),
            }
        )
    return base, adapters


def apply(adapters, base, x, alpha=16.0, linear=jax_fpx.linear):
    h = x.astype(jnp.bfloat16)
    for i, (layer, ad) in enumerate(zip(base, adapters)):
        rank = ad["A"].shape[1]
        y = linear(h, layer["kernel"], layer["bias"]).astype(jnp.float32)
        y = y + (h.astype(jnp.float32) @ ad["A"]) @ ad["B"] * (alpha / rank)
        h = (jax.nn.gelu(y) if i + 1 < len(base) else y).astype(jnp.bfloat16)
    return h


def loss_fn(adapters, base, x, target, linear=jax_fpx.linear):
    return jnp.mean((apply(adapters, base, x, linear=linear).astype(jnp.float32) - target) ** 2)


def make_step(optimizer):
    @jax.jit
    def step(adapters, opt_state, base, x, target):
        loss, grads = jax.value_and_grad(loss_fn)(adapters, base, x, target)  # adapters only
        updates, opt_state = optimizer.update(grads, opt_state, adapters)
        return optax.apply_updates(adapters, updates), opt_state, loss

    return step


def main(steps=20):
    key = jax.random.key(0)
    base, adapters = init(key)
    kx, kt = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (64, 256), jnp.float32)
    target = jax.random.normal(kt, (64, 256), jnp.float32)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(adapters)
    step = make_step(optimizer)
    for i in range(steps):
        adapters, opt_state, loss = step(adapters, opt_state, base, x, target)
        if i % 5 == 0 or i == steps - 1:
            print(f"step {i:3d}  loss {float(loss):.4f}")
    return adapters


if __name__ == "__main__":
    main()
