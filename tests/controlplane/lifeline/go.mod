module svcplane.dev/tests/controlplane/lifeline

go 1.26.0
