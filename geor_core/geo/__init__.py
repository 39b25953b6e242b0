"""Geography: Haversine math, the offline gazetteer, country names, Chain-of-Region text, prompts and the one parsing rule."""
