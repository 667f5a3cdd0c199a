"""DeepSpeed applied after a model is built: switches that must not change results."""

import torch

from workers.models import UNetConfig, build_unet

from tests.math_helpers import one_thread  # noqa: F401  (fixture)


def test_gradient_checkpointing_gives_the_same_gradients():
    """The switch (roles.*.sharding.gradient_checkpointing) trades compute for memory, never the result."""
    import copy

    from workers.deepspeed_setup import enable_gradient_checkpointing

    torch.manual_seed(5)
    eps_unet = build_unet(UNetConfig(), num_classes=0)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(6)), torch.tensor([10, 200, 500, 900])
    grads = []
    for checkpointing in (False, True):
        unet = copy.deepcopy(eps_unet).train()
        if checkpointing:
            assert enable_gradient_checkpointing(unet) == 1 and unet.is_gradient_checkpointing
        unet(x, t).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
