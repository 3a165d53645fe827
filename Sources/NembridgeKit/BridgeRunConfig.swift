import TorchPickle
import WeightMapping

/// Megatron-Bridge's `run_config.yaml` for a checkpoint nembridge imported: the model provider and
/// the checkpoint settings Bridge reads when it fine-tunes from (`checkpoint.pretrained_checkpoint`)
/// or converts the folder. Keys sorted, as Bridge's own `yaml.safe_dump` writes them.
enum BridgeRunConfig {
    static func yaml(provider spec: BridgeProviderSpec, arguments: [(key: PickleValue, value: PickleValue)]) -> String {
        func argument(_ name: String) -> PickleValue? { arguments.last(where: { $0.key == .string(name) })?.value }
        var model: [(String, String)] = [("_target_", spec.provider)]
        for (name, source) in spec.fields {
            switch source {
            case .argument(let argumentName):
                if let value = argument(argumentName), let text = scalar(value) { model.append((name, text)) }
            case .not(let argumentName):
                if let value = argument(argumentName)?.boolValue { model.append((name, value ? "false" : "true")) }
            case .function(let path):
                model.append((name, "\n    _call_: false\n    _target_: \(path)"))
            case .value(let literal):
                if let text = scalar(PickleValue(json: literal)) { model.append((name, text)) }
            }
        }
        var lines = ["_target_: megatron.bridge.training.config.ConfigContainer", "checkpoint:",
                     "  _target_: megatron.bridge.training.config.CheckpointConfig", "  ckpt_format: torch_dist",
                     "  fully_parallel_save: true", "  save_optim: false", "  save_rng: false", "model:"]
        for (name, text) in model.sorted(by: { $0.0 < $1.0 }) {
            lines.append(text.hasPrefix("\n") ? "  \(name):\(text)" : "  \(name): \(text)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A YAML scalar PyYAML's safe_load reads back as the same Python value.
    static func scalar(_ value: PickleValue) -> String? {
        switch value {
        case .none: return "null"
        case .bool(let flag): return flag ? "true" : "false"
        case .int(let int): return String(int)
        case .float(let double):
            // PyYAML (YAML 1.1) only reads floats with a dot: 1.0e-05, not 1e-05.
            var text = "\(double)"
            if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }), !text[..<e].contains(".") {
                text.insert(contentsOf: ".0", at: e)
            } else if !text.contains(".") && !text.contains("e") && !text.contains("n") && !text.contains("i") {
                text += ".0"
            }
            return text
        case .string(let text): return "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
        case .global(let module, let name): return "\n    _call_: false\n    _target_: \(module).\(name)"
        default: return nil
        }
    }
}

extension BridgeRunConfig {
    /// `text` (a run_config.yaml as Bridge or nembridge wrote it) with the given fields of its
    /// top-level sections set, after a reshard: the model's parallel sizes are the target's, and
    /// `checkpoint.save_rng` / `save_optim` false for state that was dropped, which Bridge's load
    /// reads to decide what to load. Only existing `  key: value` lines of those sections change;
    /// every other byte of the file is kept.
    static func updating(_ text: String, _ values: [String: [(key: String, value: String)]]) -> String {
        var section: String?
        var lines = text.components(separatedBy: "\n")
        for (index, line) in lines.enumerated() {
            if let first = line.first, first != " ", first != "#", line.hasSuffix(":") {
                section = String(line.dropLast())
                continue
            }
            guard let section, let fields = values[section], line.hasPrefix("  "), !line.hasPrefix("   "),
                  let colon = line.firstIndex(of: ":") else { continue }
            let key = line[line.index(line.startIndex, offsetBy: 2)..<colon]
            if let value = fields.first(where: { $0.key == key })?.value {
                lines[index] = "  \(key): \(value)"
            }
        }
        return lines.joined(separator: "\n")
    }
}
