import TensorCore
import TorchPickle

extension PickleValue {
    /// A JSON value as Python would hold it after `json.load`: ints stay ints, other numbers are floats.
    init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let flag): self = .bool(flag)
        case .number(let number):
            if let int = Int64(number.text) { self = .int(int) }
            else if let integer = PickleValue.integer(decimal: number.text), number.isPlainUnsignedInteger { self = integer }
            else { self = .float(number.doubleValue ?? .nan) }
        case .string(let text): self = .string(text)
        case .array(let items): self = .list(items.map(PickleValue.init(json:)))
        case .object(let members): self = .dict(members.map { (.string($0.key), PickleValue(json: $0.value)) })
        }
    }
}

extension PickleValue {
    /// An `argparse.Namespace` (an object whose state is a dict) with `values` set: existing
    /// fields replaced in place, new ones appended. Other values are returned unchanged.
    func settingNamespaceFields(_ values: [(name: String, value: PickleValue)]) -> PickleValue {
        guard var namespace = object, case .dict(var fields)? = namespace.state else { return self }
        for (name, value) in values {
            if let index = fields.firstIndex(where: { $0.key == .string(name) }) {
                fields[index].value = value
            } else {
                fields.append((.string(name), value))
            }
        }
        namespace.state = .dict(fields)
        return .object(namespace)
    }
}
