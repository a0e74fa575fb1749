package deploytest

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// vagrantStub defines just enough of Vagrant's configuration API to evaluate
// the Vagrantfile and print what it configures as JSON.
const vagrantStub = `
require "json"
class Rec
  attr_reader :h
  def initialize; @h = {}; end
  def method_missing(name, *args, **kw, &blk)
    key = name.to_s
    if key.end_with?("=")
      @h[key.chomp("=")] = args.first
    elsif blk
      sub = Rec.new
      blk.call(sub)
      (@h[key] ||= []) << { "args" => args, "config" => sub.h }
    else
      (@h[key] ||= []) << { "args" => args, "opts" => kw }
      @h[key].last["config"] = {}
    end
    nil
  end
  def respond_to_missing?(*) = true
end
class VM < Rec; end
class Config
  attr_reader :vm
  def initialize; @vm = VM.new; end
end
module Vagrant
  def self.configure(version)
    raise "Vagrant.configure(#{version.inspect}), want \"2\"" unless version == "2"
    $config = Config.new
    yield $config
  end
end
load ARGV[0]
puts JSON.generate($config.vm.h)
`

func TestVagrantfile(t *testing.T) {
	ruby := requireTool(t, "ruby", "ruby")
	path := filepath.Join(repoRoot, "Vagrantfile")

	if out, err := exec.Command(ruby, "-c", path).CombinedOutput(); err != nil || !strings.Contains(string(out), "Syntax OK") {
		t.Fatalf("ruby -c Vagrantfile: %v\n%s", err, out)
	}

	out, err := exec.Command(ruby, "-e", vagrantStub, path).Output()
	if err != nil {
		t.Fatalf("evaluate Vagrantfile: %v\n%s", err, out)
	}
	var vm struct {
		Box       string `json:"box"`
		Provision []struct {
			Args []string `json:"args"`
			Opts struct {
				Type   string `json:"type"`
				Inline string `json:"inline"`
				Reboot bool   `json:"reboot"`
			} `json:"opts"`
		} `json:"provision"`
	}
	if err := json.Unmarshal(out, &vm); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	if vm.Box != "debian/bookworm64" {
		t.Errorf("box %q, want debian/bookworm64 (Debian 12)", vm.Box)
	}
	var script strings.Builder
	kernelFirst := false
	for i, p := range vm.Provision {
		if p.Opts.Type != "shell" {
			t.Errorf("provisioner %v has type %q, want shell", p.Args, p.Opts.Type)
		}
		// Debian 12's kernel (6.1) is older than the 6.3 gpe-ebpf needs: the first
		// provisioner installs the backports kernel and reboots into it.
		if i == 0 && p.Opts.Reboot && strings.Contains(p.Opts.Inline, "-t bookworm-backports \"linux-image-") {
			kernelFirst = true
		}
		script.WriteString(p.Opts.Inline + "\n")
	}
	if !kernelFirst {
		t.Errorf("the first provisioner does not install a bookworm-backports kernel and reboot")
	}
	all := script.String()
	for _, want := range []string{"apt-get install -y make", "cd /vagrant", "make deps build", "make demo"} {
		if !strings.Contains(all, want) {
			t.Errorf("provisioning does not run %q", want)
		}
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		return
	}
	cmd := exec.Command(bash, "-n")
	cmd.Stdin = strings.NewReader(all)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("provisioning script: bash -n: %v\n%s", err, out)
	}
}
