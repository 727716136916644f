"""The networks: encoder E, decoder G, discriminator D, classifier C, key predictor Q, CLUB q."""
