"""Train a small Flax network on the UFM+ objective and track neural collapse inside jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ncgeom_jax import capture_features, init_stats, nc_metrics, ufm_loss, update_stats

jax.config.update("jax_enable_x64", True)  # float64 statistics and reports

K, LAMBDA = 4, 5e-3
rng = np.random.default_rng(0)
counts = [60, 40, 12, 8]  # imbalanced classes
labels = np.repeat(np.arange(K), counts)
inputs = rng.normal(size=(labels.size, 10)) + 2.0 * np.eye(K, 10)[labels]
x, y = jnp.asarray(inputs), jnp.asarray(labels)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(32)(x))
        h = nn.relu(nn.Dense(16)(h))  # penultimate features: non-negative
        return nn.Dense(K, use_bias=False, name="head")(h)


model = Net()
params = model.init(jax.random.key(0), x)["params"]


def loss_fn(params, x, y):
    _, h = capture_features(model, {"params": params}, x)  # the input of "head"
    weight = params["head"]["kernel"].T  # Flax kernels are (d, K)
    return ufm_loss(weight, h, y, lambda_w=LAMBDA, lambda_h=LAMBDA, num_samples=y.shape[0])


@jax.jit
def train_step(params, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)


@jax.jit
def observe(params, stats, x, y):
    _, h = capture_features(model, {"params": params}, x)
    return update_stats(stats, h, y, validate=False)  # compiled: no host reads


for _ in range(300):
    params = train_step(params, x, y)

stats = init_stats(K, 16)
for lo in range(0, y.shape[0], 32):  # an evaluation pass in batches
    stats = observe(params, stats, x[lo : lo + 32], y[lo : lo + 32])

report = nc_metrics(stats, params["head"]["kernel"].T, lambda_w=LAMBDA, lambda_h=LAMBDA)
print(report)
assert report.num_samples == sum(counts)
