"""What runs the study rather than studies: tracking server, Ray executor, benches, budget, power, store rebuild."""
