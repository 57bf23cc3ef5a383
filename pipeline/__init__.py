"""technogan pipeline stages: synth, scrape, segment, dataset, models, train, evaluate, audio."""
