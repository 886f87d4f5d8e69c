"""A fence that makes XLA:CPU write the residual stream's gradient out once, instead of recomputing it
in every op that reads it.

In the backward pass the gradient of a Conformer block's residual stream is a chain of cheap
elementwise terms: the residual path plus each layer norm's backward. XLA:CPU's fusion copies such a
chain into every op that reads it, and one of those ops transposes the gradient for a weight
gradient (YNNPACK's dot contracts its first operand over the minor axis only). That transposing loop
recomputes the whole chain in transposed order, its dozens of inputs read across rows: 4.3 ms a call
on the small step's [3184, 256] gradients, where the transpose of a stored array takes a tenth of that,
and 17 % of the float32 step's op time (benchmarks/README.md, forty-second pass).

`cotangent_fence(x)` is the identity in the forward pass and in value; in the backward pass it
passes the gradient through a while loop whose trip count XLA cannot know at compile time (one,
unless the gradient's first element is NaN, then none; the loop multiplies by exactly 1), so no
fusion crosses it: the gradient is computed once, stored, and read from there. An optimization
barrier would not do: XLA:CPU expands barriers before it fuses.

It acts on a single CPU device only. Elsewhere it is the identity in the backward pass too: GPU and
TPU fusions read their operands in their own layouts, and on a sharded array the loop's count would
need the first element from another device.
"""
import jax
import jax.numpy as jnp

Array = jax.Array


def fences_apply() -> bool:
  """Whether `cotangent_fence` materializes gradients here: one device, XLA:CPU."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1


def materialize(x: Array) -> Array:
  """`x`, computed into a buffer of its own: the result of a while loop that XLA cannot remove."""
  first = x.reshape(-1)[0]
  # One trip, or none for a NaN first element (x comes out unchanged either way); XLA removes loops
  # of a known count and loops that pass a value through untouched, hence the runtime count and the
  # product by exactly 1.
  trips = (first == first).astype(jnp.int32)

  def body(carry):
    step, count, value = carry
    return step + 1, count, value * (count - step).astype(value.dtype)

  return jax.lax.while_loop(lambda carry: carry[0] < carry[1], body, (jnp.int32(0), trips, x))[2]


@jax.custom_vjp
def cotangent_fence(x: Array) -> Array:
  """The identity, whose gradient XLA:CPU computes once and stores (see the module docstring)."""
  return x


def _fence_fwd(x):
  return x, None


def _fence_bwd(_, g):
  return (materialize(g) if fences_apply() and g.size else g,)


cotangent_fence.defvjp(_fence_fwd, _fence_bwd)
