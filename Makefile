.PHONY: demo test setup
demo:
	bash scripts/quickstart.sh demo
test:
	bash scripts/quickstart.sh test
setup:
	bash scripts/quickstart.sh setup
