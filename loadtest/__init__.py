"""Load testing for segserve: locust scenarios, an ab wrapper, a concurrency/open-loop sweep
with a plotted report, and a runner that starts a server when none is given."""
