"""Training, data and run folders for VAE Latent Explorer."""
