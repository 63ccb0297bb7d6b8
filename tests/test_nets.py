"""core.nets: ``affine`` is ``F.linear`` and ``weight_grad`` is ``grad^T inp``, in the layouts that suit the shapes."""

import pytest
import torch
import torch.nn.functional as F

from policyopt.core.nets import affine, weight_grad


@pytest.mark.parametrize("rows,features,out,transposed", [
    (256, 256, 2, True),  # SAC's actor head
    (64, 64, 8, True),
    (256, 64, 1, False),  # a value head: a matrix-vector kernel as it is
    (256, 64, 9, False),
    (63, 64, 2, False),  # a few envs' rows when acting
])
def test_affine_is_f_linear_with_its_gradients(rows, features, out, transposed):
    g = torch.Generator().manual_seed(0)
    # float64: the two layouts sum in different orders (float32 differs in the last bits)
    x, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in ((rows, features), (out, features), (out,)))
    y, reference = affine(x, w, b), F.linear(x, w, b)
    assert y.is_contiguous() is not transposed and y.shape == reference.shape
    torch.testing.assert_close(y, reference)
    dy = torch.randn(reference.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(reference, (x, w, b), dy))


@pytest.mark.parametrize("rows,features,out,transposed", [
    (256, 4, 64, True),  # PPO's first layers on CartPole
    (2048, 3, 256, True),
    (64, 4, 64, False),
    (256, 9, 64, False),
])
def test_weight_grad_is_grad_t_inp_bit_for_bit(rows, features, out, transposed):
    g = torch.Generator().manual_seed(0)
    grad, inp = torch.randn(rows, out, generator=g), torch.randn(rows, features, generator=g)
    reference = torch.mm(grad.t(), inp)
    product = weight_grad(grad, inp)
    assert torch.equal(product, reference) and product.is_contiguous() is not transposed
    buffer = torch.zeros(out * features + 1)
    into = buffer[1:].view(out, features)  # a view of a flat gradient, as PPO's step writes
    assert weight_grad(grad, inp, out=into) is into and torch.equal(into, reference) and buffer[0] == 0
