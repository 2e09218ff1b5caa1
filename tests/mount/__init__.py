"""Tests of a real cagefs mount: ordinary tools, a random model, crashes, bad input, I1-I9."""
