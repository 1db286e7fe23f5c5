"""Work division between nodes: which node evaluates which tenant + rule group."""
