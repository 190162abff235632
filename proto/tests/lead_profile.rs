//! Keeps `nurture.v1.LeadProfile` and the domain's feature table in step:
//! every numeric (or boolean) field of the message is a model feature with
//! the same name, in the same order, and nothing else is.

use nurture_models::features::LEAD_FEATURES;
use prost::Message;
use prost_types::FileDescriptorSet;
use prost_types::field_descriptor_proto::Type;

#[test]
fn lead_profile_fields_are_exactly_the_lead_features() {
    let set = FileDescriptorSet::decode(nurture_proto::FILE_DESCRIPTOR_SET).unwrap();
    let lead_profile = set
        .file
        .iter()
        .flat_map(|file| &file.message_type)
        .find(|message| message.name() == "LeadProfile")
        .expect("LeadProfile is defined");
    let numeric: Vec<&str> = lead_profile
        .field
        .iter()
        .filter(|field| matches!(field.r#type(), Type::Double | Type::Int32 | Type::Bool))
        .map(|field| field.name())
        .collect();
    let features: Vec<&str> = LEAD_FEATURES.iter().map(|feature| feature.name).collect();
    assert_eq!(numeric, features);
    for field in lead_profile
        .field
        .iter()
        .filter(|f| matches!(f.r#type(), Type::Double | Type::Int32 | Type::Bool))
    {
        assert!(
            field.proto3_optional(),
            "{} must be optional so a missing value is visible",
            field.name()
        );
    }
}

#[test]
fn every_service_is_in_the_descriptor_set() {
    let set = FileDescriptorSet::decode(nurture_proto::FILE_DESCRIPTOR_SET).unwrap();
    let services: Vec<&str> = set
        .file
        .iter()
        .flat_map(|file| &file.service)
        .map(|s| s.name())
        .collect();
    for expected in [
        "EmotionService",
        "ChurnService",
        "JourneyService",
        "ChannelTimingService",
        "OptimizationService",
        "StatusService",
    ] {
        assert!(
            services.contains(&expected),
            "{expected} missing from {services:?}"
        );
    }
}
