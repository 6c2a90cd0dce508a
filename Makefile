# A convenience for those who have make: every target calls ./dev, which is what the README
# and CI run (a fresh server has no make). `./dev help` says what each does.
.PHONY: help setup venv image demo test lint pytest matrix molecule controllers clean-containers clean

help:
	@./dev help

setup demo test lint pytest matrix molecule controllers:
	./dev $@

# .venv and the images: both are part of ./dev setup.
venv image:
	./dev setup

# The containers made from the project's images (label org.codo.project=codo-hooks).
clean-containers:
	@ids=$$(docker ps -aq --filter label=org.codo.project=codo-hooks); \
	if [ -n "$$ids" ]; then docker rm -f $$ids; else echo "no project containers"; fi

clean:
	rm -rf .venv .cache .pytest_cache .ruff_cache
