"""FedProx (Li et al. 2020) at the silo: every trainer minimises
F_k(w) + mu/2 ||w - w_center||^2, whose gradient adds mu * (w - w_center) to the loss's.

One SGD step on one example, worked out by hand (softmax regression and Keras on
x = [1], y = 0 from a zero model: softmax [1/2, 1/2], so dLoss/dlogits = [-1/2, 1/2];
PyTorch on a 1-1 linear regression). mu 0 leaves every trainer's bytes as they were.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from structlog.testing import capture_logs

from client.trainers.base import TrainerSetupError, accepts_proximal, proximal_keywords
from client.trainers.numpy_trainer import NumpyTrainer
from client.trainers.plugin import PluginTrainer
from fedasync.core.errors import SchemaError
from fedasync.core.messages import GlobalModelNotice
from fedasync.ops.demo_silos import StragglerTrainer

X = np.array([[1.0]], np.float32)
Y = np.array([0], np.int64)
ZERO = {"dense/kernel": np.zeros((1, 2), np.float32), "dense/bias": np.zeros(2, np.float32)}
# the round's global model the proximal term pulls towards
CENTER = {
    "dense/kernel": np.array([[1.0, -1.0]], np.float32),
    "dense/bias": np.zeros(2, np.float32),
}
MU = 0.5


def numpy_trainer() -> NumpyTrainer:
    return NumpyTrainer(num_features=1, num_classes=2, learning_rate=1.0, l2=0.0)


def _same_bytes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


# --- numpy (built-in) -------------------------------------------------------------------


def test_numpy_one_step_adds_mu_times_w_minus_center_to_the_gradient():
    # GIVEN a zero model, the centre kernel [[1, -1]], mu 1/2, lr 1, no L2
    # WHEN one step is taken on x = [1], y = 0
    result = numpy_trainer().fit(
        ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=CENTER
    )
    # THEN kernel = 0 - 1 * ([-1/2, 1/2] + 1/2 * ([0, 0] - [1, -1])) = [1, -1]
    # AND  bias   = 0 - 1 * ([-1/2, 1/2] + 1/2 * ([0, 0] - [0, 0])) = [1/2, -1/2]
    np.testing.assert_allclose(result.weights["dense/kernel"], [[1.0, -1.0]], atol=1e-7)
    np.testing.assert_allclose(result.weights["dense/bias"], [0.5, -0.5], atol=1e-7)
    # AND without the term the kernel would have moved only to [1/2, -1/2]
    plain = numpy_trainer().fit(ZERO, X, Y, epochs=1, seed=0)
    np.testing.assert_allclose(plain.weights["dense/kernel"], [[0.5, -0.5]], atol=1e-7)


def test_numpy_second_epoch_is_pulled_to_the_round_s_model_not_to_its_own_start():
    # GIVEN the client's way of training: one fit per epoch, the notice's model as centre
    # (here zero), so epoch 2 starts from epoch 1's model w1 = [[1/2, -1/2]], b1 = [1/2, -1/2]
    trainer = numpy_trainer()
    first = trainer.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=ZERO)
    second = trainer.fit(
        first.weights, X, Y, epochs=1, seed=1, proximal_mu=MU, proximal_center=ZERO
    )
    # THEN logits [1, -1]: p(y=0) = sigmoid(2), dLoss/dlogit0 = sigmoid(2) - 1 = -g
    g = 1.0 - 1.0 / (1.0 + math.exp(-2.0))
    # kernel = 1/2 - (-g + 1/2 * (1/2 - 0)) = 1/4 + g, and the mirror image; bias the same
    want = 0.25 + g
    np.testing.assert_allclose(second.weights["dense/kernel"], [[want, -want]], atol=1e-6)
    np.testing.assert_allclose(second.weights["dense/bias"], [want, -want], atol=1e-6)


def test_numpy_without_a_center_pulls_to_the_model_the_fit_starts_from():
    # GIVEN no proximal_center: the centre is the `weights` given, so the first step's
    # term is zero WHEN one step is taken THEN it is exactly the plain step
    with_mu = numpy_trainer().fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU)
    plain = numpy_trainer().fit(ZERO, X, Y, epochs=1, seed=0)
    assert _same_bytes(with_mu.weights, plain.weights)


def test_numpy_mu_zero_is_byte_for_byte_the_plain_fit_on_digits(digits_split):
    # GIVEN the digits training split and the default trainer
    train = digits_split
    trainer = NumpyTrainer()
    start = trainer.init_weights(0)
    # WHEN fitted with mu 0 (and a centre) and without the keywords at all
    elsewhere = {k: v + 1.0 for k, v in start.items()}
    zero = trainer.fit(
        start, train.x, train.y, epochs=2, seed=3, proximal_mu=0.0, proximal_center=elsewhere
    )
    plain = trainer.fit(start, train.x, train.y, epochs=2, seed=3)
    # THEN the same bytes
    assert _same_bytes(zero.weights, plain.weights)


def test_numpy_a_large_mu_keeps_the_local_model_near_the_global(digits_split):
    # GIVEN the digits split WHEN trained 2 epochs with mu 0 and with mu 1
    train = digits_split
    trainer = NumpyTrainer()
    start = trainer.init_weights(0)
    plain = trainer.fit(start, train.x, train.y, epochs=2, seed=0).weights
    prox = trainer.fit(start, train.x, train.y, epochs=2, seed=0, proximal_mu=1.0).weights

    def drift(w):
        return math.sqrt(sum(float(np.sum((w[k] - start[k]) ** 2.0)) for k in w))

    # THEN the proximal model moved clearly less far from where the round started
    assert drift(prox) < 0.5 * drift(plain)


@pytest.fixture(scope="module")
def digits_split():
    from client.data import load_digits, train_test_split

    return train_test_split(load_digits(), 0.2, seed=0)[0]


# --- PyTorch ----------------------------------------------------------------------------


@pytest.mark.torch
def test_torch_one_step_backpropagates_the_proximal_term_over_the_parameters():
    torch = pytest.importorskip("torch")
    from client.trainers.torch_trainer import TorchTrainer

    # GIVEN y = w x + b with w = 1/2, b = 0, centre w_g = 3/2, b_g = 1, MSE, SGD lr 0.1
    trainer = TorchTrainer(
        torch.nn.Linear(1, 1),
        optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1),
        loss_fn=torch.nn.MSELoss(),
    )
    start = {"weight": np.array([[0.5]], np.float32), "bias": np.array([0.0], np.float32)}
    center = {"weight": np.array([[1.5]], np.float32), "bias": np.array([1.0], np.float32)}
    x, y = np.array([[2.0]], np.float32), np.array([3.0], np.float32)
    # WHEN one step is taken with mu 1/2 on x = 2, y = 3
    result = trainer.fit(start, x, y, epochs=1, seed=0, proximal_mu=MU, proximal_center=center)
    # THEN pred 1, dL/dpred = 2 (1 - 3) = -4: dL/dw = -8, dL/db = -4; the term adds
    # 1/2 (1/2 - 3/2) = -1/2 and 1/2 (0 - 1) = -1/2
    # w = 1/2 - 0.1 (-8 - 1/2) = 1.35, b = 0 - 0.1 (-4 - 1/2) = 0.45
    np.testing.assert_allclose(result.weights["weight"], [[1.35]], rtol=1e-6)
    np.testing.assert_allclose(result.weights["bias"], [0.45], rtol=1e-6)
    # AND the reported loss is F_k's alone, (1 - 3)^2 = 4 (with the term it would be 4.5)
    assert result.metrics["train_loss"] == pytest.approx(4.0)


@pytest.mark.torch
def test_torch_mu_zero_is_byte_for_byte_the_plain_fit():
    torch = pytest.importorskip("torch")
    from client.trainers.torch_trainer import TorchTrainer

    # GIVEN a small classifier and 20 seeded examples
    torch.manual_seed(0)
    trainer = TorchTrainer(torch.nn.Linear(4, 3), batch_size=8)
    start = trainer.init_weights(1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 3, 20)
    # WHEN fitted with mu 0 and without the keywords THEN the same bytes
    zero = trainer.fit(start, x, y, epochs=2, seed=5, proximal_mu=0.0, proximal_center=start)
    plain = trainer.fit(start, x, y, epochs=2, seed=5)
    assert _same_bytes(zero.weights, plain.weights)


# --- Keras ------------------------------------------------------------------------------


@pytest.mark.tf
def test_keras_trainer_one_step_adds_the_term_to_the_loss():
    pytest.importorskip("keras")
    from client.trainers.keras_trainer import KerasTrainer

    # GIVEN the same zero softmax layer, centre and mu as the numpy case, SGD lr 1
    trainer = KerasTrainer(num_features=1, num_classes=2, learning_rate=1.0)
    # WHEN one step is taken
    result = trainer.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=CENTER)
    # THEN the same hand-computed update: kernel [1, -1], bias [1/2, -1/2]
    np.testing.assert_allclose(result.weights["dense/kernel"], [[1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(result.weights["dense/bias"], [0.5, -0.5], atol=1e-6)
    # AND the loss reported is the cross-entropy alone at the start, ln 2
    assert result.metrics["train_loss"] == pytest.approx(math.log(2.0), rel=1e-5)
    # AND mu 0 is model.fit as ever: the plain update [1/2, -1/2], same bytes either way
    zero = trainer.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=0.0, proximal_center=CENTER)
    plain = trainer.fit(ZERO, X, Y, epochs=1, seed=0)
    np.testing.assert_allclose(plain.weights["dense/kernel"], [[0.5, -0.5]], atol=1e-6)
    assert _same_bytes(zero.weights, plain.weights)


@pytest.mark.tf
def test_keras_model_trainer_one_step_skips_non_trainable_variables():
    keras = pytest.importorskip("keras")
    from client.trainers.keras_model import KerasModelTrainer

    # GIVEN a compiled functional model: a frozen 1-unit Dense "scale" (kernel 1, not
    # trainable, so it is federated but takes no step) then the softmax "dense" layer
    inputs = keras.Input((1,))
    frozen = keras.layers.Dense(1, use_bias=False, name="scale", trainable=False)
    out = keras.layers.Dense(2, activation="softmax", name="dense")(frozen(inputs))
    model = keras.Model(inputs, out, name="prox")
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="sparse_categorical_crossentropy")
    trainer = KerasModelTrainer(model, batch_size=4)
    start = {"scale/kernel": np.ones((1, 1), np.float32), **ZERO}
    center = {"scale/kernel": np.full((1, 1), 5.0, np.float32), **CENTER}
    # WHEN one step is taken with mu 1/2
    result = trainer.fit(start, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=center)
    # THEN the trainable layer moves as by hand, and the frozen kernel stays at 1
    # (its centre 5 would pull it if it were stepped)
    np.testing.assert_allclose(result.weights["dense/kernel"], [[1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(result.weights["dense/bias"], [0.5, -0.5], atol=1e-6)
    np.testing.assert_array_equal(result.weights["scale/kernel"], [[1.0]])


@pytest.mark.tf
def test_keras_model_trainer_one_step_on_the_user_s_own_dataset():
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from client.trainers.keras_model import KerasModelTrainer

    # GIVEN the softmax layer fed by a tf.data.Dataset of one batch (x = [1], y = 0)
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(2, activation="softmax", name="dense")]
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="sparse_categorical_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(4)
    trainer = KerasModelTrainer(model, data=data)
    # WHEN one FedProx step is taken (the arrays the client passes are ignored)
    empty_x, empty_y = np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    result = trainer.fit(
        ZERO, empty_x, empty_y, epochs=1, seed=0, proximal_mu=MU, proximal_center=CENTER
    )
    # THEN the hand-computed update, and the dataset's one example counted
    np.testing.assert_allclose(result.weights["dense/kernel"], [[1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(result.weights["dense/bias"], [0.5, -0.5], atol=1e-6)
    assert result.num_examples == 1


# --- which trainers can; the ones that cannot refuse ------------------------------------


class PlainTrainer:
    """A user's trainer from before FedProx: its fit takes no proximal keywords."""

    name = "plain"

    def __init__(self) -> None:
        self.inner = numpy_trainer()

    def init_weights(self, seed: int):
        return self.inner.init_weights(seed)

    def fit(self, weights, x, y, *, epochs, seed):
        return self.inner.fit(weights, x, y, epochs=epochs, seed=seed)

    def evaluate(self, weights, x, y):
        return self.inner.evaluate(weights, x, y)


class SwallowingTrainer(PlainTrainer):
    """Takes any keyword and reads none: it would ignore mu silently."""

    def fit(self, weights, x, y, **kwargs):
        return self.inner.fit(weights, x, y, epochs=kwargs["epochs"], seed=kwargs["seed"])


def test_the_built_in_trainers_and_wrappers_take_the_keywords_others_do_not():
    from client.trainers.keras_model import KerasModelTrainer
    from client.trainers.keras_trainer import KerasTrainer

    assert accepts_proximal(numpy_trainer())
    assert accepts_proximal(KerasTrainer())  # the class only: TensorFlow is not imported
    assert accepts_proximal(StragglerTrainer(numpy_trainer(), 0.0, seed=0))
    assert accepts_proximal(PluginTrainer("p", lambda spec, opts: numpy_trainer(), {}))
    assert accepts_proximal(KerasModelTrainer)  # the class: no model needed to ask
    assert not accepts_proximal(PlainTrainer())
    assert not accepts_proximal(SwallowingTrainer())


def test_mu_zero_passes_no_keywords_so_any_trainer_serves_the_task():
    # GIVEN a trainer without the keywords WHEN the task's mu is 0 THEN nothing is passed
    assert proximal_keywords(PlainTrainer(), 0.0, ZERO, "digits") == {}
    # AND a capable trainer gets mu and the round's model as its centre
    got = proximal_keywords(numpy_trainer(), 0.25, CENTER, "digits")
    assert got == {"proximal_mu": 0.25, "proximal_center": CENTER}


@pytest.mark.parametrize("trainer", [PlainTrainer(), SwallowingTrainer()], ids=["plain", "kwargs"])
def test_a_trainer_that_cannot_apply_mu_refuses_the_task_with_a_logged_reason(trainer):
    # GIVEN a task with mu 0.1 WHEN the silo's trainer has no proximal keywords
    with capture_logs() as logs, pytest.raises(TrainerSetupError) as refused:
        proximal_keywords(trainer, 0.1, ZERO, "digits")
    # THEN it is refused (never silently ignored), saying which task, mu and trainer
    assert refused.value.reason == "proximal_unsupported"
    assert "task 'digits' asks for FedProx (proximal_mu=0.1)" in refused.value.message
    assert "trainer 'plain'" in refused.value.message
    assert [e["event"] for e in logs] == ["client.proximal_unsupported"]
    assert logs[0]["reason"] == "proximal_unsupported"


def test_a_plugin_passes_mu_to_a_user_trainer_that_takes_it_and_refuses_one_that_does_not():
    # GIVEN two plugins: one builds the numpy trainer, one a trainer without keywords
    capable = PluginTrainer("capable", lambda spec, opts: numpy_trainer(), {})
    plain = PluginTrainer("plain", lambda spec, opts: PlainTrainer(), {})
    # WHEN each is asked for a FedProx step
    result = capable.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=CENTER)
    # THEN the capable one applied it (the hand-computed kernel [1, -1])
    np.testing.assert_allclose(result.weights["dense/kernel"], [[1.0, -1.0]], atol=1e-7)
    # AND the other refuses, naming the plugin; with mu 0 it trains as before
    with pytest.raises(TrainerSetupError, match=r"--trainer 'plain': the task asks for FedProx"):
        plain.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=CENTER)
    plain_step = plain.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=0.0, proximal_center=CENTER)
    np.testing.assert_allclose(plain_step.weights["dense/kernel"], [[0.5, -0.5]], atol=1e-7)


def test_the_demo_s_straggler_wrapper_passes_mu_through():
    wrapped = StragglerTrainer(numpy_trainer(), 0.0, seed=0, base_s=0.0)
    result = wrapped.fit(ZERO, X, Y, epochs=1, seed=0, proximal_mu=MU, proximal_center=CENTER)
    np.testing.assert_allclose(result.weights["dense/kernel"], [[1.0, -1.0]], atol=1e-7)


# --- the notice carries mu --------------------------------------------------------------


def _notice(**over):
    base = {
        "task_name": "digits", "mode": "sync", "version": 3, "round_id": 3,
        "s3_key": "digits/global/00000003.safetensors", "sha256": "a" * 64, "size_bytes": 9,
    }  # fmt: skip
    return GlobalModelNotice(**(base | over))


def test_a_notice_without_fedprox_is_today_s_json_and_one_with_it_carries_mu():
    # GIVEN notices with mu 0 (the default) and mu 0.01
    plain, prox = _notice(), _notice(proximal_mu=0.01)
    # THEN mu 0 is not written (a silo built before the field still reads the notice)
    assert "proximal_mu" not in json.loads(plain.to_json())
    # AND mu 0.01 is, and parses back
    assert json.loads(prox.to_json())["proximal_mu"] == 0.01
    assert GlobalModelNotice.parse(prox.to_json()).proximal_mu == 0.01
    assert GlobalModelNotice.parse(plain.to_json()).proximal_mu == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_a_notice_with_a_negative_or_non_number_mu_is_refused(bad):
    data = json.loads(_notice().to_json()) | {"proximal_mu": bad}
    with pytest.raises(SchemaError, match="proximal_mu"):
        GlobalModelNotice.parse(data)
