"""l2m_jax: L2M-GAN and Latent-To-Latent face-attribute editing in JAX/Flax."""
